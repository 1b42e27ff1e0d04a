//! Reading settings out of the [`Layers`]: each read names its setting in
//! any error, falls back to the settings table's default, and *records* a
//! bad value instead of stopping, so every mistake is reported at once.
//! A read that failed stands in with the default, and checks that compare
//! several settings skip one that failed (one mistake, one message).

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use super::errors::{ConfigError, ConfigErrors};
use super::layers::{Given, Layers};
use super::settings::{by_env, default_of};
use super::values::{parse_bool, parse_duration};

pub(super) struct Reader<'a> {
    layers: &'a Layers,
    errors: RefCell<Vec<ConfigError>>,
    /// Settings whose value could not be read.
    failed: RefCell<Vec<String>>,
}

impl<'a> Reader<'a> {
    pub fn new(layers: &'a Layers) -> Self {
        Reader {
            layers,
            errors: RefCell::new(Vec::new()),
            failed: RefCell::new(Vec::new()),
        }
    }

    /// Everything recorded, or Ok.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        match ConfigErrors::from_list(self.errors.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records an error about the combination of several settings.
    pub fn problem(&self, settings: &str, message: impl Into<String>) {
        self.errors
            .borrow_mut()
            .push(ConfigError::new(settings, message));
    }

    /// Records an error about setting `env`'s value.
    pub fn bad(&self, env: &str, msg: impl fmt::Display) {
        self.failed.borrow_mut().push(env.to_string());
        self.errors.borrow_mut().push(self.err(env, msg));
    }

    /// Whether every one of `envs` was read without error.
    pub fn all_good(&self, envs: &[&str]) -> bool {
        let failed = self.failed.borrow();
        envs.iter().all(|e| !failed.iter().any(|f| f == e))
    }

    fn raw(&self, env: &str) -> Option<&Given> {
        self.layers.get(env).filter(|g| !g.value.trim().is_empty())
    }

    /// Whether `env` was given at all (an empty value counts).
    pub fn given(&self, env: &str) -> Option<&Given> {
        self.layers.get(env)
    }

    /// The error for `env`: its value and where it came from, its flag.
    pub fn err(&self, env: &str, msg: impl fmt::Display) -> ConfigError {
        let g = self.layers.get(env);
        let flag = by_env(env).map(|s| s.flag).unwrap_or(env);
        match g {
            Some(g) => ConfigError::new(
                format!("{env}={:?} (from {}; flag --{flag})", g.value, g.origin),
                msg.to_string(),
            ),
            None => ConfigError::new(format!("{env} (flag --{flag})"), msg.to_string()),
        }
    }

    /// The value given, trimmed; None when not given or empty.
    pub fn string(&self, env: &str) -> Option<String> {
        self.raw(env).map(|g| g.value.trim().to_string())
    }

    /// The value given, else the table's default.
    pub fn string_or_default(&self, env: &str) -> String {
        self.string(env)
            .or_else(|| default_of(env).map(str::to_string))
            .unwrap_or_default()
    }

    /// Parses the value given, else the table's default, with `parse`;
    /// on a bad value records it and returns `fallback`.
    pub fn parsed<T>(
        &self,
        env: &str,
        fallback: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let text = match self.raw(env) {
            Some(g) => g.value.trim().to_string(),
            None => match default_of(env) {
                Some(d) => d.to_string(),
                None => return fallback,
            },
        };
        match parse(&text) {
            Ok(v) => v,
            Err(m) => {
                self.bad(env, m);
                fallback
            }
        }
    }

    pub fn bool(&self, env: &str) -> bool {
        self.parsed(env, false, |v| {
            parse_bool(v).ok_or_else(|| "expected true or false".to_string())
        })
    }

    pub fn duration(&self, env: &str, fallback: Duration) -> Duration {
        self.parsed(env, fallback, parse_duration)
    }

    pub fn number<T: std::str::FromStr + Copy>(&self, env: &str, fallback: T, what: &str) -> T {
        self.parsed(env, fallback, |v| {
            v.parse().map_err(|_| format!("expected {what}"))
        })
    }
}
