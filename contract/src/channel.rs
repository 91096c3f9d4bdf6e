//! The trainer's end of the channel: what a trainer binary calls to get its data and to answer
//! evaluation. `experiment::child` wraps it for Burn models; a test fixture can use it directly.

use std::io::{BufWriter, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::shm::Shm;
use crate::wire::{
    CHANNEL_FD_ENV, Done, Failure, Hello, ModelInfo, PROTOCOL_VERSION, SHM_FD_ENV, StepReport, ToHarness, ToTrainer,
    TrainBatch, WireError,
};

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

    /// Training is over and the model is saved in the Hello's `model_dir`.
    pub fn training_done(&mut self, done: Done) -> Result<(), WireError> {
        self.send(&ToHarness::TrainingDone(done))
    }

    /// The model is loaded: the harness may send the first position.
    pub fn ready(&mut self) -> Result<(), WireError> {
        self.send(&ToHarness::Ready)
    }

    /// The next position of every evaluation row (one id per row), or `None` when evaluation is
    /// over.
    pub fn next_tokens(&mut self) -> Result<Option<Vec<u16>>, WireError> {
        match self.recv()? {
            ToTrainer::Tokens(ids) => Ok(Some(ids)),
            ToTrainer::Quit => Ok(None),
            other => Err(WireError::Protocol(format!("expected evaluation tokens or Quit, got {}", name(&other)))),
        }
    }

    /// Answers the position just sent with the next-token logits of every row, `[rows, vocab]`
    /// row-major, through the shared region.
    pub fn answer(&mut self, logits: &[f32]) -> Result<(), WireError> {
        let shm = self.shm.as_mut().ok_or_else(|| WireError::Protocol("answers need the shared region, which only an evaluating process has".into()))?;
        shm.write_f32s(logits)?;
        self.send(&ToHarness::Logits)
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
        ToTrainer::Tokens(_) => "Tokens",
        ToTrainer::Quit => "Quit",
    }
}
