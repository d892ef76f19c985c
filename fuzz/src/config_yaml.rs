//! Target `config_yaml`: a configuration file. It loads into a config that
//! validates again and survives a YAML round trip, or fails with a message
//! that names the fault.

use sluice_core::config::{ConfigError, RuntimeConfig};

pub fn run(data: &[u8]) {
    // Config files are read as UTF-8 text; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RuntimeConfig::from_yaml(text, "fuzz input") {
        Ok(config) => {
            config
                .validate()
                .unwrap_or_else(|err| panic!("a loaded config fails validation: {err}"));
            let yaml = serde_saphyr::to_string(&config)
                .unwrap_or_else(|err| panic!("a loaded config does not serialize: {err}"));
            let again = RuntimeConfig::from_yaml(&yaml, "round trip")
                .unwrap_or_else(|err| panic!("a loaded config does not load again: {err}\n{yaml}"));
            let yaml_again = serde_saphyr::to_string(&again).unwrap_or_default();
            assert_eq!(yaml, yaml_again, "the round trip changed the config");
        }
        Err(err) => {
            let detail = match &err {
                ConfigError::Parse { message, .. } => message,
                ConfigError::Invalid(message) => message,
                ConfigError::Read { .. } => panic!("parsing text read a file"),
            };
            assert!(
                !detail.trim().is_empty(),
                "error without a message: {err:?}"
            );
        }
    }
}
