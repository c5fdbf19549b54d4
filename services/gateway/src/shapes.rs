//! Lambda's JSON shapes: requests as the AWS SDKs send them, and the
//! `FunctionConfiguration` document they expect back.

use std::collections::BTreeMap;

use nimbus_proto::FunctionConfig;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CodeInput {
    pub zip_file: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_key: Option<String>,
    pub image_uri: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvironmentInput {
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EphemeralStorageInput {
    pub size: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunction {
    pub function_name: String,
    pub runtime: Option<String>,
    pub role: Option<String>,
    pub handler: Option<String>,
    pub code: CodeInput,
    #[serde(default)]
    pub description: Option<String>,
    pub timeout: Option<u32>,
    pub memory_size: Option<u32>,
    pub environment: Option<EnvironmentInput>,
    pub package_type: Option<String>,
    pub ephemeral_storage: Option<EphemeralStorageInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateCode {
    pub zip_file: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_key: Option<String>,
    pub image_uri: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    pub revision_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfiguration {
    pub runtime: Option<String>,
    pub role: Option<String>,
    pub handler: Option<String>,
    pub description: Option<String>,
    pub timeout: Option<u32>,
    pub memory_size: Option<u32>,
    pub environment: Option<EnvironmentInput>,
    pub ephemeral_storage: Option<EphemeralStorageInput>,
    pub revision_id: Option<String>,
}

pub fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:000000000000:function:{name}")
}

/// `FunctionConfiguration` as Lambda returns it.
pub fn configuration(cfg: &FunctionConfig, region: &str) -> Value {
    json!({
        "FunctionName": cfg.name,
        "FunctionArn": function_arn(region, &cfg.name),
        "Runtime": cfg.runtime,
        "Role": cfg.role,
        "Handler": cfg.handler,
        "CodeSize": cfg.code.size,
        "Description": cfg.description,
        "Timeout": cfg.timeout_secs,
        "MemorySize": cfg.memory_mb,
        "LastModified": cfg.last_modified,
        "CodeSha256": sha256_base64(&cfg.code.sha256_hex),
        "Version": "$LATEST",
        "Environment": { "Variables": cfg.environment },
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": cfg.revision_id,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": { "Size": cfg.ephemeral_storage_mb },
        "SnapStart": { "ApplyOn": "None", "OptimizationStatus": "Off" },
        "LoggingConfig": { "LogFormat": "Text", "LogGroup": format!("/aws/lambda/{}", cfg.name) },
    })
}

/// Lambda reports `CodeSha256` as the base64 of the digest; we store hex.
pub fn sha256_base64(hex: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lambda's `LastModified` format: `2026-11-30T11:28:22.000+0000`.
pub fn last_modified_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_is_base64_of_digest() {
        // sha256("") in hex and base64
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            sha256_base64(hex),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn last_modified_format() {
        let s = last_modified_now();
        assert_eq!(s.len(), "2026-11-30T11:28:22.000+0000".len(), "{s}");
        assert!(s.ends_with("+0000"));
    }
}
