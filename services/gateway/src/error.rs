//! `ApiError`: every error the gateway returns, mapped to AWS error types and HTTP
//! statuses here and nowhere else. Bodies are what botocore's rest-json parser reads:
//! the `x-amzn-ErrorType` header carries the type, the body `{"Type","Message"}`
//! (and `message`, which some SDKs read) carries the text.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_proto::{ErrorCode, WireError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    InvalidRequestContent(String),
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("{0}")]
    EntityTooLarge(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Service(String),
    /// A request without valid credentials (403 with the SigV4 error type).
    #[error("{0}")]
    Auth(#[from] nimbus_sigv4::AuthError),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFoundException", "User"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "ResourceConflictException", "User"),
            Self::InvalidParameter(_) => (
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                "User",
            ),
            Self::Validation(_) => (StatusCode::BAD_REQUEST, "ValidationException", "User"),
            Self::InvalidRequestContent(_) => (
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "User",
            ),
            Self::RequestTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                "User",
            ),
            Self::EntityTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                "User",
            ),
            Self::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailedException",
                "User",
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "User",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "Service",
            ),
            Self::Service(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "Service",
            ),
            Self::Auth(e) => (StatusCode::FORBIDDEN, e.aws_type(), "User"),
        }
    }

    pub fn not_found(name: &str) -> Self {
        Self::NotFound(format!(
            "Function not found: arn:aws:lambda:us-east-1:000000000000:function:{name}"
        ))
    }

    pub fn from_wire(err: WireError) -> Self {
        match err.code {
            ErrorCode::FunctionNotFound => Self::NotFound(err.message),
            ErrorCode::TooManyRequests => Self::TooManyRequests(err.message),
            ErrorCode::InvalidRequest => Self::InvalidRequestContent(err.message),
            ErrorCode::CodeChecksumMismatch => {
                Self::Service(format!("CodeChecksumMismatch: {}", err.message))
            }
            ErrorCode::CodeUnavailable => {
                Self::Service(format!("CodeUnavailable: {}", err.message))
            }
            ErrorCode::UnsupportedRuntime => Self::InvalidParameter(err.message),
            ErrorCode::Internal => Self::Service(err.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, origin) = self.parts();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(error_type = kind, %message, "request failed");
        }
        let body = serde_json::json!({ "Type": origin, "Message": message, "message": message });
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(kind));
        resp
    }
}
