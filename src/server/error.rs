//! The one place that turns failures into HTTP answers: a status and a JSON body
//! `{"error": "...", "status": N}`. Internal details (paths, backtraces) never reach clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::preprocess::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("server is busy: the request queue is full, retry shortly")]
    QueueFull,
    #[error("model is not loaded yet, retry shortly")]
    NotReady,
    #[error("request timed out")]
    Timeout,
    #[error("a valid API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")]
    Unauthorized,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::QueueFull | ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An image that failed to decode, described for the client.
    pub fn from_decode(e: DecodeError) -> Self {
        match e {
            DecodeError::UnknownFormat | DecodeError::UnsupportedFormat(_) => {
                ApiError::UnsupportedMediaType(e.to_string())
            }
            DecodeError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            DecodeError::Image(image::ImageError::Limits(_))
            | DecodeError::Gif(gif::DecodingError::MemoryLimit) => {
                ApiError::PayloadTooLarge("image needs more memory to decode than allowed".into())
            }
            DecodeError::Empty
            | DecodeError::ZeroSized
            | DecodeError::TruncatedJpeg
            | DecodeError::NoGifFrame
            | DecodeError::Malformed { .. }
            | DecodeError::Image(_)
            | DecodeError::Gif(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<super::batcher::QueueFull> for ApiError {
    fn from(_: super::batcher::QueueFull) -> Self {
        ApiError::QueueFull
    }
}

impl From<super::batcher::InferenceFailed> for ApiError {
    fn from(_: super::batcher::InferenceFailed) -> Self {
        ApiError::Internal
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        Self::from_decode(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(serde_json::json!({"error": self.to_string(), "status": status.as_u16()}));
        let mut response = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"classify\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::batcher::{InferenceFailed, QueueFull};

    /// Each failure of the per-image path has its status by type, not by its message.
    #[test]
    fn per_image_failures_map_to_their_status() {
        let status = |e: ApiError| e.status().as_u16();
        assert_eq!(status(QueueFull.into()), 503);
        assert_eq!(status(InferenceFailed.into()), 500);
        assert_eq!(status(DecodeError::Empty.into()), 400);
        assert_eq!(status(DecodeError::TruncatedJpeg.into()), 400);
        assert_eq!(status(DecodeError::UnknownFormat.into()), 415);
        assert_eq!(status(DecodeError::UnsupportedFormat("HEIF").into()), 415);
        let too_large = DecodeError::TooLarge {
            width: 50_000,
            height: 50_000,
            max_pixels: 1,
        };
        assert_eq!(status(too_large.into()), 413);
        assert_eq!(status(ApiError::Timeout), 504);
        // Internals never reach the client.
        assert_eq!(
            ApiError::from(InferenceFailed).to_string(),
            "internal error"
        );
    }
}
