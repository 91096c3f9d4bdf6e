//! The trainer's end of the channel: what a trainer binary calls to get its data and to answer
//! evaluation. `prepare::child` wraps it for Burn models; a test fixture can use it directly.

use std::io::{BufWriter, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::shm::Shm;
use crate::wire::{
    Answer, CHANNEL_FD_ENV, Done, EvalBatch, Failure, Hello, ModelInfo, PROTOCOL_VERSION, Position, SHM_FD_ENV,
    StepReport, ToHarness, ToTrainer, TrainBatch, WireError,
};

/// What the harness asks for during evaluation.
#[derive(Debug)]
pub enum EvalRequest {
    /// Answer this batch.
    Batch(EvalBatch),
    /// Send full logits at these positions of the batch just answered.
    Reveal(Vec<Position>),
    /// Evaluation is over.
    Quit,
}

/// The trainer's connection to the harness.
pub struct Channel {
    reader: UnixStream,
    writer: BufWriter<UnixStream>,
    shm: Option<Shm>,
    hello: Hello,
}

fn not_started_by_harness(what: &str) -> WireError {
    WireError::Protocol(format!(
        "{what}: this program is the trainer and is started by the harness (`harness --trainer PATH`), not by hand"
    ))
}

fn fd_from_env(name: &str) -> Result<RawFd, WireError> {
    let v = std::env::var(name).map_err(|_| not_started_by_harness(&format!("${name} is not set")))?;
    v.parse().map_err(|_| not_started_by_harness(&format!("${name} is {v:?}, not a descriptor")))
}

impl Channel {
    /// Connects to the harness through the descriptors it left open, and reads its `Hello`.
    pub fn from_harness() -> Result<Channel, WireError> {
        let fd = fd_from_env(CHANNEL_FD_ENV)?;
        // SAFETY: the harness hands over this descriptor for the trainer's sole use.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        let mut reader = stream.try_clone()?;
        let hello = match ToTrainer::read(&mut reader)? {
            ToTrainer::Hello(h) => *h,
            other => return Err(WireError::Protocol(format!("expected Hello first, got {other:?}"))),
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(WireError::Protocol(format!(
                "the harness speaks protocol {}, this trainer {PROTOCOL_VERSION}: rebuild the workspace",
                hello.protocol
            )));
        }
        let shm = if hello.shm_bytes > 0 {
            let fd = fd_from_env(SHM_FD_ENV)?;
            // SAFETY: the harness hands over this region for the trainer's sole use.
            Some(unsafe { Shm::from_inherited(fd, hello.shm_bytes as usize) }?)
        } else {
            None
        };
        Ok(Channel { reader, writer: BufWriter::new(stream), shm, hello })
    }

    /// What the harness said about the run.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    fn send(&mut self, m: &ToHarness) -> Result<(), WireError> {
        m.write(&mut self.writer).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => WireError::Closed,
            _ => WireError::Io(e),
        })?;
        self.writer.flush()?;
        Ok(())
    }

    fn recv(&mut self) -> Result<ToTrainer, WireError> {
        ToTrainer::read(&mut self.reader)
    }

    /// Tells the harness about the model (for MFU and the summary).
    pub fn send_model(&mut self, info: ModelInfo) -> Result<(), WireError> {
        self.send(&ToHarness::Model(info))
    }

    /// Asks for the next step's `rows` rows, reporting the step just finished. `None`: the
    /// budget is spent, stop training.
    pub fn next_step(&mut self, rows: usize, report: Option<StepReport>) -> Result<Option<TrainBatch>, WireError> {
        let rows = u32::try_from(rows).map_err(|_| WireError::Protocol(format!("{rows} rows in one step")))?;
        self.send(&ToHarness::NextStep { rows, report })?;
        match self.recv()? {
            ToTrainer::Batch(b) => Ok(Some(b)),
            ToTrainer::Stop => Ok(None),
            other => Err(WireError::Protocol(format!("expected a training batch or Stop, got {}", name(&other)))),
        }
    }

    /// Training is over; the model is ready to be evaluated.
    pub fn training_done(&mut self, done: Done) -> Result<(), WireError> {
        self.send(&ToHarness::TrainingDone(done))
    }

    /// The harness's next evaluation request.
    pub fn next_eval(&mut self) -> Result<EvalRequest, WireError> {
        match self.recv()? {
            ToTrainer::Eval(b) => Ok(EvalRequest::Batch(b)),
            ToTrainer::Reveal(p) => Ok(EvalRequest::Reveal(p)),
            ToTrainer::Quit => Ok(EvalRequest::Quit),
            other => Err(WireError::Protocol(format!("expected an evaluation request, got {}", name(&other)))),
        }
    }

    /// Answers a batch with all its logits, `[rows, seq, vocab]` row-major (full mode).
    pub fn answer_full(&mut self, logits: &[f32]) -> Result<(), WireError> {
        let shm = self.shm.as_mut().ok_or_else(|| WireError::Protocol("full answers need the shared region (the harness asked for summaries)".into()))?;
        shm.write_f32s(logits)?;
        self.send(&ToHarness::Answer(Answer::Full))
    }

    /// Answers a batch with per-position values (summary mode): `lse` `[rows, seq]`, `next`
    /// `[rows, seq - 1]`, `last` `[rows, vocab]`.
    pub fn answer_summary(&mut self, lse: Vec<f32>, next: Vec<f32>, last: Vec<f32>) -> Result<(), WireError> {
        self.send(&ToHarness::Answer(Answer::Summary { lse, next, last }))
    }

    /// Full logits at the positions of a `Reveal`, `[positions, vocab]`.
    pub fn send_vectors(&mut self, vectors: Vec<f32>) -> Result<(), WireError> {
        self.send(&ToHarness::Vectors(vectors))
    }

    /// Reports why training or evaluation stopped. Best effort: the harness may be gone.
    pub fn fail(&mut self, failure: Failure) {
        let _ = self.send(&ToHarness::Failed(failure));
    }
}

fn name(m: &ToTrainer) -> &'static str {
    match m {
        ToTrainer::Hello(_) => "Hello",
        ToTrainer::Batch(_) => "Batch",
        ToTrainer::Stop => "Stop",
        ToTrainer::Eval(_) => "Eval",
        ToTrainer::Reveal(_) => "Reveal",
        ToTrainer::Quit => "Quit",
    }
}
