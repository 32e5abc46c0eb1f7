//! Session recording: taps that read exec/attach streams, the asciicast writer
//! (`cast`), the failure policy (`fail`), and the proxy's clients of the recorder for
//! sessions (`client`) and API events (`events_client`). The records they send live in
//! `record`.

pub mod cast;
pub mod client;
pub mod events_client;
pub mod fail;
pub mod tap;
