//! The failure policy (README, "Failure policy"): what a session or an API request
//! does when recording goes wrong, decided in one pure function for both fail modes.
//! Every site that meets a recording failure names its situation and acts on the
//! answer; none decides on its own. No I/O.

/// What to do when a session or event cannot be recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Keep the user working; the recording is marked truncated or skipped (default).
    #[default]
    Open,
    /// Nothing happens that is not recorded (`enforceRecorder`).
    Closed,
}

impl FailMode {
    /// As recordings and the recorder name it (`failMode` in the header).
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Situation {
    /// No recorder acknowledged the header before the upgrade.
    NoRecorderAtStart,
    /// The recorder closed, errored, or stopped acknowledging mid-session.
    RecorderLost,
    /// Output waits for an acknowledgement that does not come within the silence bound.
    RecorderStalled,
    /// The queue towards the recorder is full: it is not keeping up.
    QueueFull,
    /// A frame from the API server the tap cannot parse.
    UnparsableUpstream,
    /// The client broke the stream protocol (a reused or unknown stream, a text frame on
    /// a channel protocol, an oversized control frame): no real kubectl does this.
    ClientViolation,
    /// An API request's event cannot be recorded.
    EventUnrecordable,
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on without recording (a session not started, or an event dropped).
    Proceed,
    /// Refuse before anything reaches the API server.
    Refuse,
    /// Stop recording, mark the recording truncated, leave the session running.
    StopRecording,
    /// End the session now and tell the user why.
    EndSession,
}

/// The failure policy as one table.
pub fn decide(mode: FailMode, situation: Situation) -> Decision {
    use Decision::*;
    use Situation::*;
    match (situation, mode) {
        (ClientViolation, _) => EndSession,
        (NoRecorderAtStart | EventUnrecordable, FailMode::Open) => Proceed,
        (NoRecorderAtStart | EventUnrecordable, FailMode::Closed) => Refuse,
        (RecorderLost | RecorderStalled | QueueFull | UnparsableUpstream, FailMode::Open) => StopRecording,
        (RecorderLost | RecorderStalled | QueueFull | UnparsableUpstream, FailMode::Closed) => EndSession,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_table() {
        use Decision::*;
        use Situation::*;
        let table = [
            (NoRecorderAtStart, Proceed, Refuse),
            (RecorderLost, StopRecording, EndSession),
            (RecorderStalled, StopRecording, EndSession),
            (QueueFull, StopRecording, EndSession),
            (UnparsableUpstream, StopRecording, EndSession),
            (ClientViolation, EndSession, EndSession),
            (EventUnrecordable, Proceed, Refuse),
        ];
        for (situation, open, closed) in table {
            assert_eq!(decide(FailMode::Open, situation), open, "{situation:?} fail-open");
            assert_eq!(decide(FailMode::Closed, situation), closed, "{situation:?} fail-closed");
        }
    }
}
