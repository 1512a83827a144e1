//! OpenTelemetry export: with OTEL_EXPORTER_OTLP_ENDPOINT set, the server's spans (one per gRPC
//! call, named after the method) reach an OTLP collector; without it, nothing is dialled. The
//! collector here is a fake on loopback, started by the test.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use routeplane_api::ipam::v1 as pb;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    self.spans
                        .lock()
                        .unwrap()
                        .push((service.clone(), span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector_named_by_method() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let service = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::BIN);
    command
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let mut server = routeplane_testkit::Service::start("routeplane-ipam", command);
    let grpc = server.listen_addr("gRPC");
    assert!(
        server.log().contains("exporting traces over OTLP"),
        "{}",
        server.log()
    );

    let mut c = pb::ipam_client::IpamClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    c.register_node(pb::RegisterNodeRequest {
        name: "a".into(),
        addresses: vec!["10.4.94.10".into()],
        labels: HashMap::new(),
    })
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        if spans.contains(&(
            "routeplane-ipam".to_string(),
            "/routeplane.ipam.v1.Ipam/RegisterNode".to_string(),
        )) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no RegisterNode span exported in 20 s; got {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();
}
