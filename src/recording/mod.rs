//! Session recording: taps that read exec/attach streams, the asciicast session
//! writer (`cast`), the failure policy, and the recorder protocol shared by the proxy and the
//! recorder.

pub mod cast;
pub mod client;
pub mod event;
pub mod fail;
pub mod events_client;
pub mod protocol;
pub mod tap;
