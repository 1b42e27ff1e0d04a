//! What is wrong with a configuration: one [`ConfigError`] per setting to
//! fix, all of them at once ([`ConfigErrors`]), so a user fixes every
//! mistake in one go instead of one start-up at a time.

use std::fmt;
use std::path::Path;

/// A configuration error: the setting, where its value came from, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }

    pub(super) fn file(path: &Path, message: String) -> Self {
        ConfigError::new(format!("config file {}", path.display()), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {}",
            self.setting, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Every error found, in the order the settings were read; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// `errors` without repeats (a setting two modes read is named once);
    /// None when there are none.
    pub fn from_list(errors: Vec<ConfigError>) -> Option<ConfigErrors> {
        let mut unique: Vec<ConfigError> = Vec::new();
        for e in errors {
            if !unique.contains(&e) {
                unique.push(e);
            }
        }
        (!unique.is_empty()).then_some(ConfigErrors(unique))
    }

    pub fn list(&self) -> &[ConfigError] {
        &self.0
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// One line per error, each complete on its own.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
