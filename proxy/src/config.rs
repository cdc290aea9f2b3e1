//! Proxy configuration: one source of defaults (`Default`), TOML with unknown keys
//! rejected, flags applied on top by `main.rs`, then `validate`.

use serde::Deserialize;

/// Everything the proxy needs to run; passed explicitly, never global.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the MySQL listener binds.
    pub listen: String,
    /// Backend MySQL/MariaDB URL; its user+password are the only accepted login when
    /// `users` is empty.
    pub backend: String,
    /// Coordinator address(es), comma-separated. Stored for AT mode (a later issue).
    pub coordinator: String,
    /// Schema holding `undo_log` on each backend. Stored for AT mode (a later issue).
    pub undo_schema: String,
    /// Client sessions served at once; the next one gets error 1040.
    pub max_connections: usize,
    /// Seconds running statements get to finish after SIGTERM before connections are cut.
    pub shutdown_grace_secs: u64,
    /// Seconds allowed for a client handshake and for getting a backend connection.
    pub connect_timeout_secs: u64,
    /// Accepted client logins. Empty: exactly the backend URL's user and password.
    pub users: Vec<User>,
}

/// One accepted client login.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub password: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:3307".into(),
            backend: "mysql://root@127.0.0.1:3306".into(),
            coordinator: "http://127.0.0.1:8091".into(),
            undo_schema: "rewind".into(),
            max_connections: 1024,
            shutdown_grace_secs: 30,
            connect_timeout_secs: 10,
            users: Vec::new(),
        }
    }
}

impl Config {
    /// Parses a TOML config file's text (unknown keys are an error).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        mysql_async::Opts::from_url(&self.backend)
            .map_err(|e| format!("backend URL {:?}: {e}", self.backend))?;
        if self.undo_schema.is_empty() {
            return Err("undo_schema must not be empty".into());
        }
        Ok(())
    }

    /// The accepted (user, password) pairs after applying the "backend URL user" rule.
    pub fn logins(&self) -> Vec<User> {
        if !self.users.is_empty() {
            return self.users.clone();
        }
        match mysql_async::Opts::from_url(&self.backend) {
            Ok(o) => vec![User {
                name: o.user().unwrap_or("").to_string(),
                password: o.pass().unwrap_or("").to_string(),
            }],
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../rewind-proxy.example.toml");
        let c = Config::from_toml(text).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.users.len(), 2);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("listen = \"x\"\nbogus = 1\n").is_err());
        assert!(Config::from_toml("[[users]]\nname = \"a\"\npasword = \"typo\"\n").is_err());
    }

    #[test]
    fn backend_url_user_is_the_default_login() {
        let c = Config {
            backend: "mysql://app:s3cret@db:3306/x".into(),
            ..Config::default()
        };
        assert_eq!(
            c.logins(),
            vec![User {
                name: "app".into(),
                password: "s3cret".into()
            }]
        );
    }
}
