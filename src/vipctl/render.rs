//! kubectl-like tables for `vipctl status`.

use std::fmt::Write;

use super::report::Report;
use crate::status::StatusDoc;

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn ago(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        Some(s) => format!("{:.0}d", s / 86400.0),
    }
}

fn or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!(
            "{}...",
            s.chars().take(n.saturating_sub(3)).collect::<String>()
        )
    }
}

pub fn report(r: &Report) -> String {
    let mut out = String::new();
    if !r.control_plane.is_empty() {
        out.push_str("CONTROL-PLANE VIP\n");
        let rows: Vec<Vec<String>> = r
            .control_plane
            .iter()
            .map(|v| {
                vec![
                    v.vip.clone(),
                    v.leader.clone().unwrap_or_else(|| "-".into()),
                    or_dash(&v.held_by),
                    ago(v.moved_seconds_ago),
                    if v.ok { "OK" } else { "PROBLEM" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["VIP", "LEADER", "HELD BY", "MOVED", "STATE"],
            &rows,
        ));
        out.push('\n');
    }
    out.push_str("SERVICES\n");
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            vec![
                format!("{}/{}", s.namespace, s.name),
                if s.addresses.is_empty() {
                    "<pending>".into()
                } else {
                    s.addresses.join(",")
                },
                s.announced_by.clone().unwrap_or_else(|| "-".into()),
                or_dash(&s.held_by),
                s.pool.clone().unwrap_or_else(|| "-".into()),
                s.state.clone(),
                truncate(s.last_event.as_deref().unwrap_or("-"), 70),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAMESPACE/NAME",
            "ADDRESSES",
            "VIPHOST",
            "HELD BY",
            "POOL",
            "STATE",
            "LAST EVENT",
        ],
        &rows,
    ));
    out.push('\n');
    out.push_str("INSTANCES\n");
    let rows: Vec<Vec<String>> = r
        .instances
        .iter()
        .map(|i| {
            vec![
                i.node.clone(),
                if i.status.is_empty() {
                    if i.alive { "alive" } else { "gone" }.to_string()
                } else {
                    i.status.clone()
                },
                i.ready.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
                or_dash(&i.held),
                or_dash(&i.bgp_peers),
                i.version.clone().unwrap_or_else(|| "-".into()),
                ago(i.seconds_since_seen),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "STATUS",
            "READY",
            "HOLDS",
            "BGP PEERS",
            "VERSION",
            "SEEN",
        ],
        &rows,
    ));
    if !r.problems.is_empty() {
        out.push_str("\nPROBLEMS\n");
        for p in &r.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

pub fn local(d: &StatusDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NODE {}  vipd {}  up {:.0}s  READY {}",
        d.node, d.version, d.uptime_seconds, d.ready
    );
    if !d.ready {
        let _ = writeln!(out, "not ready: {}", d.not_ready.join("; "));
    }
    if let Some(n) = &d.last_not_ready {
        let lasted = n
            .lasted_ms
            .map(|m| format!("{m:.0} ms"))
            .unwrap_or_else(|| "ongoing".into());
        let _ = writeln!(
            out,
            "last not ready: {} ({lasted}); {} times in all",
            n.reason, d.not_ready_total
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .elections
        .iter()
        .map(|e| {
            vec![
                e.lease.clone(),
                if e.leading { "leader" } else { "follower" }.into(),
                e.holder.clone().unwrap_or_else(|| "-".into()),
                e.transitions.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ELECTION", "ROLE", "HOLDER", "TRANSITIONS"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .addresses
        .iter()
        .map(|a| {
            vec![
                a.address.to_string(),
                a.interface.clone(),
                if a.ours { "vipd" } else { "operator" }.into(),
            ]
        })
        .collect();
    out.push_str(&table(&["ADDRESS", "INTERFACE", "ADDED BY"], &rows));
    if let Some(s) = &d.services {
        let _ = writeln!(
            out,
            "\nServices: {} served, {} ready, {} pending, {} withdrawn; {} announced here",
            s.served,
            s.ready,
            s.pending,
            s.withdrawn,
            s.announced_here.len()
        );
    }
    if !d.bgp_peers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = d
            .bgp_peers
            .iter()
            .map(|p| {
                vec![
                    p.address.clone(),
                    p.asn.to_string(),
                    p.state.clone(),
                    p.bfd.clone().unwrap_or_else(|| "-".into()),
                    p.prefixes_sent.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["BGP PEER", "AS", "STATE", "BFD", "SENT"], &rows));
    }
    let _ = writeln!(
        out,
        "\nannouncements sent: {} (errors {})",
        d.announcements_sent, d.announcement_errors
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "y".into()],
                vec!["z".into(), "w".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  y\nz     w\n");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(Some(5.2)), "5s");
        assert_eq!(ago(Some(600.0)), "10m");
        assert_eq!(ago(None), "-");
    }
}
