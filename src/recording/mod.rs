//! Session recording: taps that read exec/attach streams, the asciicast writer
//! (`cast`), the failure policy (`fail`), and the proxy's clients of the recorder for
//! sessions (`client`, which skips recorders that failed lately: `health`) and API
//! events (`events_client`); what upgraded streams carry,
//! for their events: `kubectl cp`'s files (`transfer`, over `tar`) and port-forwards'
//! bytes (`portforward`). The records they send live in `record`.

pub mod cast;
pub mod client;
pub mod events_client;
pub mod fail;
pub mod health;
pub mod portforward;
pub mod tap;
pub mod tar;
pub mod transfer;
