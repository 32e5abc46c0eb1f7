//! Real kubectl → kubetape proxy → simulated cluster, for every case of the matrix,
//! per kubectl version and exec protocol.

mod support;

use support::{matrix, Demo, Proto};

fn run(version: &str, proto: Proto) {
    let demo = Demo::start();
    let report = matrix::against_demo(&demo, version, proto);
    let label = format!("kubectl {version} over {proto}");
    println!("{}", report.table(&label));
    let failures = report.failures();
    assert!(failures.is_empty(), "{label}: {failures:#?}\n{}", demo.logs());
}

#[test]
fn kubectl_1_32_websocket() {
    run("1.32", Proto::WebSocket);
}

#[test]
fn kubectl_1_32_spdy() {
    run("1.32", Proto::Spdy);
}

#[test]
fn kubectl_1_27_spdy_only() {
    run("1.27", Proto::Spdy);
}

#[test]
fn kubectl_1_33_websocket() {
    run("1.33", Proto::WebSocket);
}
