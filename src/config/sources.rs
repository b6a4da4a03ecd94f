//! Where values come from besides the file: the environment and the command line.

pub const ENV_SECRET: &str = "DIRECTLINE_SECRET";
pub const ENV_TOKEN_KEY: &str = "DIRECTLINE_GATEWAY_TOKEN_KEY";

/// Values a command line may override; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub public_url: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Where environment variables come from; tests pass a map instead of the process env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}
