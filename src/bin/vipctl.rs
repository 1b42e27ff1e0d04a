//! `vipctl`: the operator's view of vipd (see `vipctl status`).

fn main() -> std::process::ExitCode {
    eprintln!("vipctl: `vipctl status` comes with the status work (issue 7)");
    std::process::ExitCode::from(2)
}
