//! Values as vipd reads them from text: booleans and durations in
//! kube-vip's forms, addresses, prefix lengths, names. Pure functions; the
//! setting they belong to is named by the caller.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::types::{AddressSpec, Subnets};

/// `true`/`false` as kube-vip (Go's strconv.ParseBool) accepts them.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Whole seconds (kube-vip's form) or a number with a unit: `500ms`, `1.5s`, `2m`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        "expected seconds, or a number with a unit (ms, s, m), e.g. 500ms".to_string()
    })?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s or m")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 86_400.0 {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_address_list(v: &str) -> Result<Vec<AddressSpec>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(ip) = part.parse::<IpAddr>() {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(format!("{ip} cannot be a virtual IP"));
            }
            out.push(AddressSpec::Ip(ip));
        } else if is_dns_name(part) {
            out.push(AddressSpec::Name(part.to_string()));
        } else {
            return Err(format!("{part:?} is neither an IP address nor a DNS name"));
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    let v4 = out
        .iter()
        .filter(|a| matches!(a, AddressSpec::Ip(IpAddr::V4(_))))
        .count();
    let v6 = out
        .iter()
        .filter(|a| matches!(a, AddressSpec::Ip(IpAddr::V6(_))))
        .count();
    if v4 > 1 || v6 > 1 {
        return Err("at most one IPv4 and one IPv6 address (dual-stack)".into());
    }
    Ok(out)
}

fn is_dns_name(s: &str) -> bool {
    // Names must contain a letter: "192.0.2" is a typo of an IP, not a name.
    s.len() <= 253
        && s.chars().any(|c| c.is_ascii_alphabetic())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub fn parse_subnets(v: &str) -> Result<Subnets, String> {
    let parts: Vec<&str> = v
        .split(',')
        .map(|p| p.trim().trim_start_matches('/'))
        .collect();
    let num = |p: &str| {
        p.parse::<u8>()
            .map_err(|_| format!("{p:?} is not a prefix length"))
    };
    let (v4, v6) = match parts.as_slice() {
        [one] => {
            let n = num(one)?;
            if n <= 32 {
                (n, 128)
            } else {
                (32, n)
            }
        }
        [a, b] => (num(a)?, num(b)?),
        _ => return Err("expected 32, 128 or 32,128".into()),
    };
    if v4 > 32 || v6 > 128 || v4 == 0 || v6 == 0 {
        return Err("IPv4 prefix must be 1-32 and IPv6 prefix 1-128".into());
    }
    Ok(Subnets { v4, v6 })
}

pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ' ', ':']) && s != "." && s != ".."
}

/// A DNS-1123 subdomain (names of Leases, namespaces).
pub fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    let v = v.trim();
    // kube-vip's ":2112" means every address.
    let full = if v.starts_with(':') {
        format!("0.0.0.0{v}")
    } else {
        v.to_string()
    };
    full.parse()
        .map_err(|_| "expected HOST:PORT or :PORT".to_string())
}

pub fn parse_log_level(v: &str) -> Option<String> {
    let l = v.trim().to_ascii_lowercase();
    let named = match l.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => l.clone(),
        // kube-vip passes a number: slog levels (-4 debug, 0 info, 4 warn, 8
        // error) or logrus-style 0-5; map both to the nearest name.
        "-4" | "5" => "debug".into(),
        "0" | "4" => "info".into(),
        "8" | "1" | "2" => "error".into(),
        "3" => "warn".into(),
        _ => return None,
    };
    Some(named)
}
