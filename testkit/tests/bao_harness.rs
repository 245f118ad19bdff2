//! The one OpenBao harness, both ways: a server it starts, and `Bao::connect` to a server
//! started elsewhere (the pod runner's way), against a real OpenBao.

use keyward_testkit::bao::{Bao, BaoError};
use serde_json::json;

#[tokio::test]
async fn connect_speaks_to_a_server_started_elsewhere_with_its_token() {
    let server = Bao::start();
    let client = Bao::connect(&format!("{}/", server.addr()), server.token());
    assert_eq!(client.addr(), server.addr(), "a trailing slash is dropped");

    let version = server.kv_put("harness", json!({"k": "v1"})).await;
    let read = client
        .try_api("GET", "secret/data/harness", None)
        .await
        .expect("read with the root token");
    assert_eq!(read["data"]["data"]["k"], "v1");
    assert_eq!(read["data"]["metadata"]["version"], version);

    // A wrong token: an answer (403), named with method, path and status by try_api.
    let stranger = Bao::connect(&server.addr(), "not-the-root-token");
    let (status, _) = stranger
        .call("GET", "secret/data/harness", None)
        .await
        .expect("an answer");
    assert_eq!(status, 403);
    match stranger.try_api("GET", "secret/data/harness", None).await {
        Err(e @ BaoError::Status { status: 403, .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("GET secret/data/harness answered 403"),
                "{text}"
            );
        }
        other => panic!("expected a 403 error, got {other:?}"),
    }
    assert!(matches!(
        client.call("NOT A METHOD", "sys/health", None).await,
        Err(BaoError::Method(_))
    ));
    // Dropping a client stops nothing: the server still answers.
    drop(client);
    drop(stranger);
    let (status, _) = server.api_status("GET", "sys/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_naming_the_request() {
    let port = keyward_testkit::free_port();
    let client = Bao::connect(&format!("http://127.0.0.1:{port}"), "root");
    let err = client
        .try_api("GET", "sys/health", None)
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(err, BaoError::Request { .. }) && err.to_string().contains("GET sys/health"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "not Bao::connect")]
fn server_operations_on_a_connected_client_panic_naming_why() {
    Bao::connect("http://127.0.0.1:1", "root").cli(&["status"]);
}
