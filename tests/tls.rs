//! TLS end to end with certificates generated here: the client listener (HTTP/2 and
//! HTTP/1.1 by ALPN, streams over wss, certificate reload without dropping a socket) and a
//! private upstream trusted through `upstream_ca_file`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_gateway::config::TlsFiles;
use futures_util::StreamExt;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::process::TempDir;
use support::*;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

struct Certificate {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn certificate() -> Certificate {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    Certificate {
        pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn roots(trusted: &[&Certificate]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).unwrap();
    }
    roots
}

/// A client trusting exactly these certificates, with the ring provider and no ALPN.
fn client_tls(trusted: &[&Certificate]) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(trusted))
        .with_no_client_auth(),
    )
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn https_client(tls: &Arc<rustls::ClientConfig>, http2: bool) -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**tls).clone())
        .https_only();
    let connector = if http2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn call(
    client: &HttpsClient,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Version, Value) {
    let mut request = Request::post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let response =
        tokio::time::timeout(WAIT, client.request(request.body(Full::new(body)).unwrap()))
            .await
            .expect("answered in time")
            .expect("TLS request succeeds");
    let (status, version) = (response.status(), response.version());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        version,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The certificate a fresh TLS connection to `addr` is served. Resumption is off: a resumed
/// session reports the certificate of the session it resumed, not the one served now.
async fn served_certificate(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let mut fresh = (**tls).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(fresh))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn tls_files(dir: &TempDir, cert: &Certificate) -> TlsFiles {
    TlsFiles {
        cert_file: dir.write("tls.crt", &cert.pem).into(),
        key_file: dir.write("tls.key", &cert.key_pem).into(),
        watch_interval: Duration::from_millis(50),
    }
}

async fn admin_metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::get(format!("http://{admin}/metrics"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    metric(&String::from_utf8_lossy(&text), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_negotiates_h2_and_http1_streams_over_wss_and_reloads_its_certificate() {
    let emulator = Harness::emulator(directline_emulator::EmulatorConfig {
        secret: directline_emulator::Secret::new(SECRET),
        ..Default::default()
    })
    .await;
    let dir = TempDir::new("tls");
    let first = certificate();
    let second = certificate();
    let mut config = config_with_upstream(&emulator.base_url());
    config.tls = Some(tls_files(&dir, &first));
    let gateway = start_gateway(config).await;
    let base = format!("https://127.0.0.1:{}", gateway.client_addr.port());
    let trust_both = client_tls(&[&first, &second]);

    let h2 = https_client(&trust_both, true);
    let (status, version, generated) = call(
        &h2,
        format!("{base}/v3/directline/tokens/generate"),
        None,
        None,
    )
    .await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    let http1 = https_client(&trust_both, false);
    let (status, version, _) = call(
        &http1,
        format!("{base}/v3/directline/tokens/generate"),
        None,
        None,
    )
    .await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));

    // Over HTTP/2 there is no Host header: the stream URL comes from :authority, as wss.
    let (status, _, started) = call(
        &h2,
        format!("{base}/v3/directline/conversations"),
        generated["token"].as_str(),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let stream_url = started["streamUrl"].as_str().unwrap();
    let expected_prefix = format!(
        "wss://127.0.0.1:{}/v3/directline/",
        gateway.client_addr.port()
    );
    assert!(stream_url.starts_with(&expected_prefix), "{stream_url}");
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        stream_url,
        None,
        false,
        Some(Connector::Rustls(trust_both.clone())),
    )
    .await
    .expect("wss stream opens");
    let id = started["conversationId"].as_str().unwrap();
    let token = started["token"].as_str().unwrap();
    let post = async |text: &str| {
        let (status, _, _) = call(
            &h2,
            format!("{base}/v3/directline/conversations/{id}/activities"),
            Some(token),
            Some(json!({"type": "message", "from": {"id": "u"}, "text": text})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    };
    let wait_for = async |ws: &mut support::Ws, wanted: &str| loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = frame
            && text.contains(wanted)
        {
            return;
        }
    };
    post("over tls").await;
    wait_for(&mut ws, "echo: over tls").await;

    assert_eq!(
        served_certificate(gateway.client_addr, &trust_both).await,
        first.der
    );
    // TLS 1.2 clients are served too.
    let tls12_only = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&[&first]))
        .with_no_client_auth(),
    );
    let tcp = tokio::net::TcpStream::connect(gateway.client_addr)
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls12_only)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    drop(stream);
    // Renewal: new files in place; new handshakes get the new certificate, the open
    // socket carries on.
    dir.write("tls.crt", &second.pem);
    dir.write("tls.key", &second.key_pem);
    eventually("the certificate reload counted", async || {
        admin_metric(
            gateway.admin_addr,
            "directline_gateway_tls_reloads_total{result=\"ok\"}",
        )
        .await
            == 1.0
    })
    .await;
    assert_eq!(
        served_certificate(gateway.client_addr, &trust_both).await,
        second.der
    );
    post("after the renewal").await;
    wait_for(&mut ws, "echo: after the renewal").await;

    // A broken file is refused; the last good certificate keeps serving.
    dir.write("tls.crt", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    eventually("the failed reload counted", async || {
        admin_metric(
            gateway.admin_addr,
            "directline_gateway_tls_reloads_total{result=\"error\"}",
        )
        .await
            == 1.0
    })
    .await;
    assert_eq!(
        served_certificate(gateway.client_addr, &trust_both).await,
        second.der
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_upstream_is_trusted_through_upstream_ca_file() {
    // A private upstream (the App Service extension, private link): Direct Line over TLS
    // with a certificate no public root signed, for REST and for its wss stream URLs.
    let private = certificate();
    let server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![private.der.clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(private.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let emulator = Harness::emulator(directline_emulator::EmulatorConfig {
        secret: directline_emulator::Secret::new(SECRET),
        tls: Some(Arc::new(server_tls)),
        ..Default::default()
    })
    .await;
    assert!(emulator.base_url().starts_with("https://"));
    let dir = TempDir::new("upstream-ca");

    let mut trusting = config_with_upstream(&emulator.base_url());
    trusting.bot_mut().upstream_ca_file = Some(dir.write("upstream-ca.pem", &private.pem).into());
    let trusting = start_gateway(trusting).await;
    let h = Harness::attach_in_process(emulator.clone(), &trusting);
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "via a private upstream")
        .await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: via a private upstream".into())
    })
    .await;
    assert!(
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/stream") && r.status == 101),
        "the upstream stream was dialled over wss"
    );

    // Without the CA the same upstream is refused (502) before anything is half-done.
    let untrusting = start_gateway(config_with_upstream(&emulator.base_url())).await;
    let h = Harness::attach_in_process(emulator.clone(), &untrusting);
    let reply = h
        .request(
            http::Method::POST,
            "/v3/directline/tokens/generate",
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    for gateway in [trusting, untrusting] {
        gateway.shutdown().await;
    }
}
