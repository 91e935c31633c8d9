//! The agent image's registry login in Secrets Manager, for a private agent
//! image: the task definition names the secret, never the password.

use std::collections::HashMap;

use super::sdk_error;
use super::settings::EcsSettings;
use crate::config::Config;
use crate::platform::PlatformError;

/// The stage Secrets Manager (and ECS, reading a task's secrets) treats as
/// the secret's value.
const CURRENT: &str = "AWSCURRENT";

/// The Secrets Manager secret holding the agent image's registry login:
/// AGENT_IMAGE_SECRET_ARN if given (checked to exist), else one created from
/// AGENT_IMAGE_USERNAME/AGENT_IMAGE_PASSWORD, or found from an earlier start
/// and given the current login.
pub(super) async fn image_secret(
    shared: &aws_config::SdkConfig,
    config: &Config,
    settings: &EcsSettings,
) -> Result<Option<String>, PlatformError> {
    let sm = aws_sdk_secretsmanager::Client::new(shared);
    if let Some(arn) = &config.agent_image_secret_arn {
        let out = sm
            .describe_secret()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| fail(sdk_error(&e)))?;
        return Ok(out.arn().map(String::from).or_else(|| Some(arn.clone())));
    }
    let (Some(user), Some(password)) = (&config.agent_image_username, &config.agent_image_password)
    else {
        return Ok(None);
    };
    let name = format!("{}/agent-image-registry", settings.owner);
    let login = Login::new(user, password.expose());
    match sm.describe_secret().secret_id(&name).send().await {
        Ok(out) => {
            let versions = Versions(out.version_ids_to_stages().cloned().unwrap_or_default());
            login.make_current(&sm, &name, &versions).await?;
            Ok(out.arn().map(String::from))
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            login.create(&sm, &name).await
        }
        Err(e) => Err(fail(format!("reading {name}: {}", sdk_error(&e)))),
    }
}

fn fail(e: String) -> PlatformError {
    PlatformError::Config(format!("agent image credentials: {e}"))
}

/// The login as the secret stores it, and the version token it is written
/// under: a hash of the value, so that writing an unchanged login adds no
/// version and a login seen before names its earlier version.
struct Login {
    value: String,
    token: String,
}

impl Login {
    fn new(user: &str, password: &str) -> Self {
        let value = serde_json::json!({"username": user, "password": password}).to_string();
        let token = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes()));
        Self { value, token }
    }

    async fn create(
        self,
        sm: &aws_sdk_secretsmanager::Client,
        name: &str,
    ) -> Result<Option<String>, PlatformError> {
        let out = sm
            .create_secret()
            .name(name)
            .description("Registry login for the bakery agent image (created by bakery-controller)")
            .client_request_token(&self.token)
            .secret_string(self.value)
            .send()
            .await
            .map_err(|e| fail(sdk_error(&e)))?;
        Ok(out.arn().map(String::from))
    }

    /// Leaves the secret's current value this login. A new login is a new
    /// version (PutSecretValue makes it current). A login written before,
    /// then replaced (a password rotated and rotated back), has a version
    /// already: Secrets Manager ignores a PutSecretValue repeating its
    /// token, so the current stage is moved to that version instead, both
    /// when DescribeSecret lists it and when it has lost every stage (and
    /// so is listed no more) and the PutSecretValue answer says it is not
    /// current.
    async fn make_current(
        self,
        sm: &aws_sdk_secretsmanager::Client,
        name: &str,
        versions: &Versions,
    ) -> Result<(), PlatformError> {
        if versions.is_current(&self.token) {
            return Ok(());
        }
        if !versions.exists(&self.token) {
            let put = sm
                .put_secret_value()
                .secret_id(name)
                .client_request_token(&self.token)
                .secret_string(&self.value)
                .send()
                .await
                .map_err(|e| fail(format!("updating {name}: {}", sdk_error(&e))))?;
            // A new version is current. A version that lost every stage
            // (A->B->C->A: DescribeSecret no longer lists A) answers the
            // repeated token as a retry, unchanged and not current.
            if put.version_stages().iter().any(|s| s == CURRENT) {
                return Ok(());
            }
        }
        let mut update = sm
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(CURRENT)
            .move_to_version_id(&self.token);
        if let Some(current) = versions.current() {
            update = update.remove_from_version_id(current);
        }
        update.send().await.map_err(|e| {
            fail(format!(
                "making {name}'s earlier version current: {}",
                sdk_error(&e)
            ))
        })?;
        Ok(())
    }
}

/// A secret's versions and their stages, as DescribeSecret lists them.
struct Versions(HashMap<String, Vec<String>>);

impl Versions {
    fn exists(&self, version: &str) -> bool {
        self.0.contains_key(version)
    }

    fn is_current(&self, version: &str) -> bool {
        self.0
            .get(version)
            .is_some_and(|stages| stages.iter().any(|s| s == CURRENT))
    }

    fn current(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == CURRENT))
            .map(|(version, _)| version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[(&str, &[&str])]) -> Versions {
        Versions(
            list.iter()
                .map(|(v, s)| (v.to_string(), s.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn the_current_version_is_found_among_earlier_ones() {
        let v = versions(&[("a", &["AWSPREVIOUS"]), ("b", &["AWSCURRENT"]), ("c", &[])]);
        assert_eq!(v.current(), Some("b"));
        assert!(v.is_current("b"));
        assert!(!v.is_current("a") && v.exists("a") && v.exists("c"));
        assert!(!v.exists("d"));
    }

    #[test]
    fn the_same_login_gives_the_same_token_and_another_a_new_one() {
        assert_eq!(Login::new("u", "p").token, Login::new("u", "p").token);
        assert_ne!(Login::new("u", "p").token, Login::new("u", "q").token);
        assert_eq!(Login::new("u", "p").token.len(), 64);
    }
}
