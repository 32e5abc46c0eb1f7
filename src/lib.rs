//! kubetape: a Kubernetes API server proxy that records kubectl sessions and API
//! requests. Layers, bottom-up: `wire` → `net` → `kube` → apps (`proxy`, `sim`) → `cli`.

pub mod args;
pub mod cli;
pub mod error;
pub mod kube;
pub mod net;
pub mod playback;
pub mod proxy;
pub mod recorder;
pub mod recording;
pub mod storage;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;
