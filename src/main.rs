fn main() {
    // The process-wide TLS provider, before any TLS is set up.
    kubetape::net::tls::install_provider();
    // Before any thread starts, so sigwait(2) in one thread sees every SIGTERM.
    if let Err(e) = kubetape::net::signal::block_termination() {
        eprintln!("kubetape: blocking signals: {e}");
        std::process::exit(1);
    }
    // ureq's protocol layer dumps request heads and bodies at trace level: bearer
    // tokens and TokenReview bodies must not reach the log, whatever RUST_LOG says.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).filter_module("ureq_proto", log::LevelFilter::Off).format_timestamp_millis().init();
    std::process::exit(kubetape::cli::main(std::env::args().collect()));
}
