//! kubetape: a Kubernetes API server proxy that records kubectl sessions and API
//! requests. Layers, bottom-up: `wire` (parsers, no I/O) → `net` (sockets, TLS, the
//! accept loop) → `record` (the records everyone shares) → `recording`, `storage`,
//! `kube` → apps (`proxy`, `recorder`, `operator`, `sim`, `playback`) → `cli`.

pub mod args;
pub mod cli;
pub mod error;
pub mod kube;
pub mod net;
pub mod operator;
pub mod playback;
pub mod proxy;
pub mod record;
pub mod recorder;
pub mod recording;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod wire;
