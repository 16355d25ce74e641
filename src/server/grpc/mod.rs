//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, what
//! `tritonclient.grpc` and KServe clients call), on its own port (`--grpc-port`). The same
//! models, batching, limits and API keys as HTTP: a message larger than the body limit is
//! refused before it is decoded, each call runs under the request timeout, and where keys
//! are configured every call but the health checks needs `authorization: Bearer KEY` or
//! `x-api-key: KEY` metadata.
//!
//! Inputs: one BYTES tensor of encoded images, in `raw_input_contents` (the serialized form
//! tritonclient sends) or `contents.bytes_contents`. Outputs come back in
//! `raw_output_contents`, the form tritonclient reads (FP32/INT64 little-endian, BYTES
//! length-prefixed), with Triton's classification extension as over HTTP.

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod inference;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use inference::model_infer_response::InferOutputTensor;
use inference::model_metadata_response::TensorMetadata;
use inference::{infer_parameter::ParameterChoice, InferParameter};
use inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::kserve::{self, OutputTensor, TensorData, WantedOutput};
use super::models::{check_version, ServedModel};
use super::routes::with_timeout;
use super::{ApiKeys, AppState};

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::BadRequest(_) | ApiError::UnsupportedMediaType(_) => {
                Status::invalid_argument(message)
            }
            ApiError::PayloadTooLarge(_) => Status::resource_exhausted(message),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::MethodNotAllowed(_) => Status::unimplemented(message),
            ApiError::QueueFull | ApiError::NotReady => Status::unavailable(message),
            ApiError::Timeout => Status::deadline_exceeded(message),
            ApiError::Unauthorized => Status::unauthenticated(message),
            ApiError::Internal => Status::internal(message),
        }
    }
}

struct Inference {
    state: AppState,
}

impl Inference {
    /// Count a call in the server-wide series (as route `grpc:Method`).
    fn observe(&self, method: &str, status: u16, start: Instant) {
        self.state
            .0
            .metrics
            .observe_request(&format!("grpc:{method}"), status, start.elapsed());
    }

    fn model(&self, name: &str, version: &str) -> Result<&Arc<ServedModel>, ApiError> {
        let model = self.state.models().get(name)?;
        if !version.is_empty() {
            check_version(name, version)?;
        }
        Ok(model)
    }

    async fn infer(
        &self,
        model: &ServedModel,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, ApiError> {
        let images = input_images(request.inputs, request.raw_input_contents)?;
        let wanted = if request.outputs.is_empty() {
            WantedOutput::all()
        } else {
            request
                .outputs
                .iter()
                .map(|o| {
                    let classification = match o.parameters.get("classification") {
                        None => None,
                        Some(p) => Some(int_param(p).ok_or_else(|| {
                            ApiError::BadRequest(
                                "parameters.classification must be a positive integer".into(),
                            )
                        })?),
                    };
                    WantedOutput::named(&o.name, classification)
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let top_k = match request.parameters.get("top_k") {
            None => self.state.0.limits.default_top_k,
            Some(p) => int_param(p)
                .filter(|k| *k >= 1)
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("parameters.top_k must be a positive integer".into())
                })?,
        };
        let outputs = kserve::infer_outputs(&self.state, model, images, &wanted, top_k).await?;
        let (outputs, raw): (Vec<_>, Vec<_>) = outputs.iter().map(raw_output).unzip();
        Ok(ModelInferResponse {
            model_name: model.name().to_string(),
            model_version: "1".into(),
            id: request.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        })
    }
}

/// An integer parameter (clients send classification/top_k as int64, some as strings).
fn int_param(p: &InferParameter) -> Option<i64> {
    match p.parameter_choice.as_ref()? {
        ParameterChoice::Int64Param(v) => Some(*v),
        ParameterChoice::StringParam(s) => s.trim().parse().ok(),
        ParameterChoice::BoolParam(_) => None,
    }
}

/// The encoded images of the (single) BYTES input.
fn input_images(
    inputs: Vec<inference::model_infer_request::InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<Vec<Bytes>, ApiError> {
    let [input] = <[_; 1]>::try_from(inputs).map_err(|_| {
        ApiError::BadRequest("expected exactly one input (BYTES, encoded images)".into())
    })?;
    if input.datatype != "BYTES" {
        return Err(ApiError::BadRequest(
            "the input's datatype must be BYTES".into(),
        ));
    }
    let images = match (raw.len(), input.contents) {
        (1, _) => kserve::bytes_elements(Bytes::from(raw.into_iter().next().unwrap_or_default()))?,
        (0, Some(contents)) => contents
            .bytes_contents
            .into_iter()
            .map(Bytes::from)
            .collect(),
        _ => {
            return Err(ApiError::BadRequest(
                "the input needs its images in raw_input_contents (one entry) or contents.bytes_contents".into(),
            ))
        }
    };
    let expected: i64 = input.shape.iter().product();
    if input.shape.is_empty() || expected != images.len() as i64 {
        return Err(ApiError::BadRequest(format!(
            "the input's shape {:?} does not match its {} images",
            input.shape,
            images.len()
        )));
    }
    kserve::check_image_count(images.len())?;
    Ok(images)
}

/// The tensor's metadata, and its values in the raw little-endian form.
fn raw_output(t: &OutputTensor) -> (InferOutputTensor, Vec<u8>) {
    let raw = match &t.data {
        TensorData::Bytes(v) => v
            .iter()
            .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
            .collect(),
        TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let meta = InferOutputTensor {
        name: t.name.to_string(),
        datatype: t.datatype().to_string(),
        shape: t.shape.iter().map(|&d| d as i64).collect(),
        parameters: Default::default(),
        contents: None,
    };
    (meta, raw)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let model = self.model(&r.name, &r.version)?;
        Ok(Response::new(ModelReadyResponse {
            ready: model.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "classify".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["classification".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.model(&r.name, &r.version)?;
        let tensor = |name: &str, datatype: &str, shape: &[i64]| TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name().to_string(),
            versions: vec!["1".into()],
            platform: "classify-candle".into(),
            inputs: vec![tensor("image", "BYTES", &[-1])],
            outputs: vec![
                tensor("labels", "BYTES", &[-1, -1]),
                tensor("probabilities", "FP32", &[-1, -1]),
                tensor("class_ids", "INT64", &[-1, -1]),
            ],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let model = match self.model(&request.model_name, &request.model_version) {
            Ok(m) => m.clone(),
            Err(e) => {
                self.observe("ModelInfer", e.status().as_u16(), start);
                return Err(e.into());
            }
        };
        let answer = with_timeout(&self.state, self.infer(&model, request)).await;
        let status = answer
            .as_ref()
            .map_or_else(|e| e.status().as_u16(), |_| 200);
        self.observe("ModelInfer", status, start);
        model.metrics.observe_request(status, start.elapsed());
        Ok(Response::new(answer?))
    }
}

/// The calls that stay open where API keys are required (probes carry none).
const OPEN_METHODS: [&str; 3] = ["ServerLive", "ServerReady", "ModelReady"];

/// Check the API key of a call (HTTP/2 headers, as gRPC metadata): the same keys and
/// headers as HTTP; the health checks stay open.
fn authorize<B>(keys: &ApiKeys, request: &http::Request<B>) -> Result<(), Status> {
    let method = request.uri().path().rsplit('/').next().unwrap_or("");
    if OPEN_METHODS.contains(&method) || keys.accepts(request.headers()) {
        Ok(())
    } else {
        Err(Status::unauthenticated(ApiError::Unauthorized.to_string()))
    }
}

/// The service behind an API-key check (a tower layer, so it sees the method's path,
/// which an interceptor does not).
#[derive(Clone)]
struct Guard<S> {
    inner: S,
    keys: Option<ApiKeys>,
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(keys) = &self.keys {
            if let Err(status) = authorize(keys, &request) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// Serve gRPC on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let limits = state.0.limits;
    let keys = state.0.access.api_keys.clone();
    let service = GrpcInferenceServiceServer::new(Inference { state })
        .max_decoding_message_size(limits.max_body_bytes);
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .add_service(Guard {
            inner: service,
            keys,
        })
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop)
        .await
}
