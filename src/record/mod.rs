//! The records the other layers share: the recorder protocol with a session's metadata
//! and status (`protocol`), and API request events with what a request does in
//! Kubernetes terms (`event`). Types and their encodings only, no I/O: `recording`
//! writes them, `storage` keeps them, the apps serve them.

pub mod event;
pub mod protocol;
