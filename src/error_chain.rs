//! An error and its causes as one line an operator can read: each cause
//! once (libraries often repeat their source in their own message, and
//! `{:#}` then prints it twice), paths quoted once.

use std::error::Error;

/// `e` and its causes, joined by ": ", without repeats.
pub fn chain(e: &anyhow::Error) -> String {
    join(e.chain())
}

fn join<'a>(links: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for link in links {
        let text = describe(link);
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// One link in its own words; a few library messages are put better.
fn describe(e: &(dyn Error + 'static)) -> String {
    if let Some(kube::config::KubeconfigError::ReadConfig(io, path)) = e.downcast_ref() {
        // kube says "failed to read kubeconfig from '\"PATH\"': ERR".
        return format!("cannot read kubeconfig {}: {io}", path.display());
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_once_and_the_path_quoted_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let kube = kube::config::KubeconfigError::ReadConfig(io, "/root/.kube/config".into());
        let e = anyhow::Error::new(kube).context("no Kubernetes credentials");
        let text = chain(&e);
        assert_eq!(
            text,
            format!(
                "no Kubernetes credentials: cannot read kubeconfig /root/.kube/config: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
        assert!(!text.contains("'\""), "{text}");
    }

    #[test]
    fn a_cause_repeated_in_its_parents_message_is_dropped() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = anyhow::Error::new(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(chain(&e), "outer: disk on fire");
    }
}
