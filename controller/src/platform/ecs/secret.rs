//! The agent image's registry login in Secrets Manager, for a private agent
//! image: the task definition names the secret, never the password.

use super::sdk_error;
use super::settings::EcsSettings;
use crate::config::Config;
use crate::platform::PlatformError;

/// The Secrets Manager secret holding the agent image's registry login:
/// AGENT_IMAGE_SECRET_ARN if given (checked to exist), else one created from
/// AGENT_IMAGE_USERNAME/AGENT_IMAGE_PASSWORD, or found from an earlier start
/// and given the current login (a changed password had never been written).
/// The version's request token is a hash of the login, so an unchanged one
/// adds no version at each start.
pub(super) async fn image_secret(
    shared: &aws_config::SdkConfig,
    config: &Config,
    settings: &EcsSettings,
) -> Result<Option<String>, PlatformError> {
    let sm = aws_sdk_secretsmanager::Client::new(shared);
    let fail = |e: String| PlatformError::Config(format!("agent image credentials: {e}"));
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
    let value = serde_json::json!({"username": user, "password": password.expose()}).to_string();
    let token = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes()));
    if let Ok(out) = sm.describe_secret().secret_id(&name).send().await {
        sm.put_secret_value()
            .secret_id(&name)
            .client_request_token(&token)
            .secret_string(value)
            .send()
            .await
            .map_err(|e| fail(format!("updating {name}: {}", sdk_error(&e))))?;
        return Ok(out.arn().map(String::from));
    }
    let out = sm
        .create_secret()
        .name(&name)
        .description("Registry login for the bakery agent image (created by bakery-controller)")
        .client_request_token(&token)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| fail(sdk_error(&e)))?;
    Ok(out.arn().map(String::from))
}
