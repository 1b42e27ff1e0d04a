//! Raw configuration: the values given, from where, before any parsing.
//!
//! kube-vip's precedence: environment variables win over flags, flags win
//! over the config file. Each value remembers its origin so an error can
//! name the exact variable, flag or file key the user must fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::settings::{by_env, SETTINGS};
use super::ConfigError;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    Flag,
    Env,
}

/// One given value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub value: String,
    pub origin: Origin,
}

/// The values given, keyed by environment-variable name.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    values: BTreeMap<&'static str, Given>,
}

impl Layers {
    /// Sets `env` from `origin` unless a layer of higher precedence set it.
    fn put(&mut self, env: &'static str, value: String, origin: Origin) {
        let rank = |o: Origin| match o {
            Origin::File => 0,
            Origin::Flag => 1,
            Origin::Env => 2,
        };
        match self.values.get(env) {
            Some(old) if rank(old.origin) > rank(origin) => {}
            _ => {
                self.values.insert(env, Given { value, origin });
            }
        }
    }

    /// Adds a config file: YAML (or JSON) mapping of setting names to values.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        let map: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::file(path, format!("not a mapping of settings: {e}")))?;
        for (key, value) in map {
            let setting = by_env(&key)
                .ok_or_else(|| ConfigError::file(path, format!("unknown setting {key:?}")))?;
            let value = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                other => {
                    return Err(ConfigError::file(
                        path,
                        format!("{key}: expected a string, number or boolean, got {other:?}"),
                    ))
                }
            };
            self.put(setting.env, value, Origin::File);
        }
        Ok(())
    }

    /// Adds command-line flags, as `(env name, value)` pairs.
    pub fn add_flags<'a>(&mut self, flags: impl IntoIterator<Item = (&'a str, String)>) {
        for (env, value) in flags {
            if let Some(s) = by_env(env) {
                self.put(s.env, value, Origin::Flag);
            }
        }
    }

    /// Adds the environment variables named in the settings table.
    pub fn add_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for s in SETTINGS {
            if let Some(v) = lookup(s.env) {
                self.put(s.env, v, Origin::Env);
            }
        }
    }

    pub fn get(&self, env: &str) -> Option<&Given> {
        self.values.get(env)
    }

    /// Which settings were given where, names only (values may be
    /// secrets): `environment: a, b; flag: c`.
    pub fn sources(&self) -> String {
        let mut parts = Vec::new();
        for origin in [Origin::Env, Origin::Flag, Origin::File] {
            let names: Vec<&str> = self
                .values
                .iter()
                .filter(|(_, g)| g.origin == origin)
                .map(|(k, _)| *k)
                .collect();
            if !names.is_empty() {
                parts.push(format!("{origin}: {}", names.join(", ")));
            }
        }
        if parts.is_empty() {
            "none given (all defaults)".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// Every value given, for `vipd manifest`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Given)> {
        self.values.iter().map(|(k, v)| (*k, v))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::File => "config file",
            Origin::Flag => "flag",
            Origin::Env => "environment",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_beats_flags_beats_file() {
        let dir = std::env::temp_dir().join(format!("vipd-layers-{}", std::process::id()));
        std::fs::write(&dir, "port: 1\nvip_interface: eth9\naddress: 192.0.2.1\n").unwrap();
        let mut l = Layers::default();
        l.add_file(&dir).unwrap();
        l.add_flags([
            ("port", "2".to_string()),
            ("vip_interface", "eth1".to_string()),
        ]);
        l.add_env(|k| (k == "port").then(|| "3".to_string()));
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            l.get("port").unwrap(),
            &Given {
                value: "3".into(),
                origin: Origin::Env
            }
        );
        assert_eq!(l.get("vip_interface").unwrap().value, "eth1");
        assert_eq!(l.get("address").unwrap().origin, Origin::File);
        // Order of adding does not matter: a file read last loses anyway.
        let mut m = Layers::default();
        m.add_env(|k| (k == "port").then(|| "3".to_string()));
        m.add_flags([("port", "2".to_string())]);
        assert_eq!(m.get("port").unwrap().value, "3");
    }

    #[test]
    fn sources_name_settings_by_origin_never_values() {
        let mut l = Layers::default();
        l.add_flags([("port", "2".to_string())]);
        l.add_env(|k| (k == "bgp_peerpass" || k == "vip_arp").then(|| "s3cret".to_string()));
        assert_eq!(
            l.sources(),
            "environment: bgp_peerpass, vip_arp; flag: port"
        );
        assert!(!l.sources().contains("s3cret"));
        assert_eq!(Layers::default().sources(), "none given (all defaults)");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let p = std::env::temp_dir().join(format!("vipd-layers-bad-{}", std::process::id()));
        std::fs::write(&p, "vip_arpp: true\n").unwrap();
        let err = Layers::default().add_file(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(err.contains("unknown setting \"vip_arpp\""), "{err}");
    }
}
