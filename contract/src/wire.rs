//! The messages between the harness (the parent, the scorer) and the trainer (the child, the
//! code under research), framed on one Unix stream socket.
//!
//! A frame is a little-endian `u32` body length, a one-byte tag, and the body. Control messages
//! have JSON bodies; bulk messages (tokens) have raw little-endian arrays, and logits cross in
//! the shared region (`shm`), so a training batch or an evaluation answer costs one copy.
//!
//! Every trainer process has one [`Task`]. The training process:
//!
//! ```text
//! harness                                   trainer (Task::Train)
//!   Hello ------------------------------------>
//!         <------------------------------------ Model (parameters, FLOPs per token)
//!         <------------------------------------ NextStep (rows wanted, last step's loss)
//!   Batch (rows of T+1 tokens, progress) ------>          ... once per optimizer step
//!   Stop (the budget is spent) --------------->
//!         <------------------------------------ TrainingDone (the model saved in model_dir)
//! ```
//!
//! and then, for each group of evaluation rows, a fresh process that has seen nothing else:
//!
//! ```text
//! harness                                   trainer (Task::Evaluate { rows })
//!   Hello ------------------------------------>
//!         <------------------------------------ Ready (the model loaded from model_dir)
//!   Tokens (position p of every row) --------->
//!         <------------------------------------ Logits (for position p + 1, in shared memory)
//!   ... seq_len times, then Quit ------------->
//! ```
//!
//! The harness copies each answer out of the shared region before it sends the next position,
//! so a logit is committed before its target exists on the trainer's side: no evaluation
//! target ever reaches a trainer before its logits are scored. The trainer never receives a
//! path to the data or anything it could write the score with; the harness checks every size
//! it is sent.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any change to a message; the trainer refuses a harness of another version.
pub const PROTOCOL_VERSION: u32 = 2;
/// Environment variable naming the trainer's socket descriptor.
pub const CHANNEL_FD_ENV: &str = "AUTORESEARCH_CHANNEL_FD";
/// Environment variable naming the shared logits region's descriptor (evaluating processes).
pub const SHM_FD_ENV: &str = "AUTORESEARCH_SHM_FD";
/// The largest frame either side accepts: 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;

/// What a trainer process is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Train on the harness's batches until Stop, save the model into `model_dir`, say
    /// TrainingDone. This process never sees a validation token.
    Train,
    /// Load the model from `model_dir` (read-only here), say Ready, then answer `rows` rows one
    /// position at a time: after each `Tokens`, the next-token logits of every row.
    Evaluate { rows: usize },
}

/// The first message: everything the trainer is told about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub task: Task,
    /// Canonical device name (`flex`, `cuda:0`, ...), as `harness --help` lists them.
    pub device: String,
    /// Seed for initialisation (the harness's data order has its own).
    pub seed: u64,
    /// The profile's class: `gpu` or `cpu` (the trainer picks its hyperparameter table by it).
    pub class: String,
    /// The profile's dtype: `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Positions per row, in training and evaluation.
    pub seq_len: usize,
    /// Token ids are below this.
    pub vocab_size: usize,
    /// The id that starts every document.
    pub bos_id: u32,
    /// Multiplies the trainer's device batch (halved by the runner after an out-of-memory exit).
    pub device_batch_scale: f64,
    /// Optimizer steps the harness leaves out of the counted time (at most the allowance).
    pub warmup_steps: u64,
    /// The budget, as text (`time:300`, `tokens:5000000`), for the trainer's log.
    pub budget: String,
    /// TOML text of hyperparameter overrides (`harness --hparams`).
    pub hparams_override: Option<String>,
    /// The folder of the saved model: the training process writes it (it is empty then), an
    /// evaluating process may only read it.
    pub model_dir: String,
    /// Bytes of the shared logits region: `rows x vocab x 4` for an evaluating process, else 0.
    pub shm_bytes: u64,
}

/// What the trainer says about its model (reported, not measured: used for MFU and the summary).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub num_params: u64,
    /// Training FLOPs per token.
    pub flops_per_token: f64,
    pub depth: u64,
}

/// The trainer's account of a finished step, sent with the next request (for the log and the
/// divergence check).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub loss: f64,
    pub lr_multiplier: f64,
}

/// One optimizer step's data: `rows` packed rows of `seq_len + 1` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    /// Zero-based step number, counted by the harness.
    pub step: u64,
    /// Completed passes over the train shards.
    pub epoch: u64,
    /// Fraction of the budget spent when the step was handed out, in `[0, 1]` (0 in warm-up).
    pub progress: f64,
    /// Seconds since the trainer was started, by the harness's clock.
    pub elapsed: f64,
    pub rows: usize,
    pub seq_len: usize,
    /// `rows * (seq_len + 1)` ids, row-major; a row's inputs are its first `seq_len`, its
    /// targets its last `seq_len`.
    pub tokens: Vec<u16>,
}

impl TrainBatch {
    /// Row `i`: `seq_len + 1` ids.
    pub fn row(&self, i: usize) -> &[u16] {
        let w = self.seq_len + 1;
        &self.tokens[i * w..(i + 1) * w]
    }

    /// Inputs and targets of rows `from..to`, row-major, `(to - from) * seq_len` ids each.
    pub fn inputs_and_targets(&self, from: usize, to: usize) -> (Vec<u32>, Vec<u32>) {
        let t = self.seq_len;
        let mut inputs = Vec::with_capacity((to - from) * t);
        let mut targets = Vec::with_capacity((to - from) * t);
        for i in from..to {
            let row = self.row(i);
            inputs.extend(row[..t].iter().map(|&x| x as u32));
            targets.extend(row[1..].iter().map(|&x| x as u32));
        }
        (inputs, targets)
    }
}

/// What the trainer reports when training is over.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Done {
    /// Peak device memory from the backend's pool, when it has one (wgpu, CUDA).
    pub device_memory_mb: Option<f64>,
}

/// Why the trainer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The loss went NaN or above 100.
    Diverged,
    /// The device ran out of memory (the runner retries at half the device batch).
    OutOfMemory,
    Error,
}

/// A failure the trainer reports before it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub loss: Option<f64>,
}

/// Harness to trainer.
#[derive(Debug, Clone, PartialEq)]
pub enum ToTrainer {
    Hello(Box<Hello>),
    Batch(TrainBatch),
    /// The budget is spent: no more training data.
    Stop,
    /// The next position of every evaluation row, one id per row: answer with the logits of the
    /// position after it.
    Tokens(Vec<u16>),
    /// Evaluation is over: exit.
    Quit,
}

/// Trainer to harness.
#[derive(Debug, Clone, PartialEq)]
pub enum ToHarness {
    Model(ModelInfo),
    /// The next step's data, `rows` rows; `report` describes the step just finished.
    NextStep { rows: u32, report: Option<StepReport> },
    /// Training is over and the model is saved.
    TrainingDone(Done),
    /// The model is loaded: send the first position.
    Ready,
    /// The logits of the position just sent are in the shared region, `[rows, vocab]` f32.
    Logits,
    Failed(Failure),
}

/// A broken conversation.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the other side closed the channel")]
    Closed,
    #[error("no message within the time allowed")]
    TimedOut,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("channel I/O failed: {0}")]
    Io(#[from] io::Error),
}

fn violation(text: impl Into<String>) -> WireError {
    WireError::Protocol(text.into())
}

mod tag {
    pub const HELLO: u8 = b'H';
    pub const BATCH: u8 = b'B';
    pub const STOP: u8 = b'S';
    pub const TOKENS: u8 = b'T';
    pub const QUIT: u8 = b'Q';
    pub const MODEL: u8 = b'M';
    pub const NEXT_STEP: u8 = b'N';
    pub const DONE: u8 = b'D';
    pub const READY: u8 = b'R';
    pub const LOGITS: u8 = b'L';
    pub const FAILED: u8 = b'F';
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, tag: u8, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).ok().filter(|&n| n as usize <= MAX_FRAME).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("frame of {} bytes is over the limit of {MAX_FRAME}", body.len()))
    })?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = tag;
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one frame: its tag and body. A clean end of stream before a frame is [`WireError::Closed`].
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), WireError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => return Err(violation("the stream ended inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_FRAME {
        return Err(violation(format!("a frame of {len} bytes is over the limit of {MAX_FRAME}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => violation("the stream ended inside a frame"),
        _ => io_error(e),
    })?;
    Ok((head[4], body))
}

fn io_error(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::TimedOut,
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => WireError::Closed,
        _ => WireError::Io(e),
    }
}

/// Little-endian body builder.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u32(mut self, x: u32) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn f64(mut self, x: f64) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u16s(mut self, xs: &[u16]) -> Self {
        self.0.reserve(xs.len() * 2);
        for x in xs {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
}

/// Little-endian body reader; every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(violation(format!("a {} message is {} bytes short", self.what, n - self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Result<f64, WireError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn u16s(&mut self, n: usize) -> Result<Vec<u16>, WireError> {
        let bytes = self.take(n.checked_mul(2).ok_or_else(|| violation("array size overflows"))?)?;
        Ok(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
    }
    fn end(self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(violation(format!("a {} message has {} bytes too many", self.what, self.buf.len()))) }
    }
}

fn json<T: Serialize>(x: &T) -> Vec<u8> {
    serde_json::to_vec(x).expect("protocol messages serialize")
}

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| violation(format!("a {what} message is not valid: {e}")))
}

/// Checked `rows * cols`, refusing what could not fit a frame.
fn cells(rows: usize, cols: usize) -> Result<usize, WireError> {
    rows.checked_mul(cols).filter(|&n| n <= MAX_FRAME).ok_or_else(|| violation(format!("{rows} x {cols} is too large")))
}

impl ToTrainer {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            ToTrainer::Hello(h) => write_frame(w, tag::HELLO, &json(h)),
            ToTrainer::Batch(b) => {
                let body = Body::default()
                    .u64(b.step)
                    .u64(b.epoch)
                    .f64(b.progress)
                    .f64(b.elapsed)
                    .u32(b.rows as u32)
                    .u32(b.seq_len as u32)
                    .u16s(&b.tokens);
                write_frame(w, tag::BATCH, &body.0)
            }
            ToTrainer::Stop => write_frame(w, tag::STOP, &[]),
            ToTrainer::Tokens(ids) => write_frame(w, tag::TOKENS, &Body::default().u32(ids.len() as u32).u16s(ids).0),
            ToTrainer::Quit => write_frame(w, tag::QUIT, &[]),
        }
    }

    pub fn read(r: &mut impl Read) -> Result<ToTrainer, WireError> {
        let (t, body) = read_frame(r)?;
        Self::decode(t, &body)
    }

    fn decode(t: u8, body: &[u8]) -> Result<ToTrainer, WireError> {
        Ok(match t {
            tag::HELLO => ToTrainer::Hello(Box::new(from_json(body, "Hello")?)),
            tag::BATCH => {
                let mut c = Cursor::new(body, "Batch");
                let (step, epoch, progress, elapsed) = (c.u64()?, c.u64()?, c.f64()?, c.f64()?);
                let (rows, seq_len) = (c.u32()? as usize, c.u32()? as usize);
                let tokens = c.u16s(cells(rows, seq_len + 1)?)?;
                c.end()?;
                ToTrainer::Batch(TrainBatch { step, epoch, progress, elapsed, rows, seq_len, tokens })
            }
            tag::STOP => ToTrainer::Stop,
            tag::TOKENS => {
                let mut c = Cursor::new(body, "Tokens");
                let n = c.u32()? as usize;
                let ids = c.u16s(cells(n, 1)?)?;
                c.end()?;
                ToTrainer::Tokens(ids)
            }
            tag::QUIT => ToTrainer::Quit,
            other => return Err(violation(format!("unknown message tag {other:#04x} from the harness"))),
        })
    }
}

impl ToHarness {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            ToHarness::Model(m) => write_frame(w, tag::MODEL, &json(m)),
            ToHarness::NextStep { rows, report } => {
                let body = match report {
                    Some(r) => Body::default().u32(*rows).u32(1).f64(r.loss).f64(r.lr_multiplier),
                    None => Body::default().u32(*rows).u32(0),
                };
                write_frame(w, tag::NEXT_STEP, &body.0)
            }
            ToHarness::TrainingDone(d) => write_frame(w, tag::DONE, &json(d)),
            ToHarness::Ready => write_frame(w, tag::READY, &[]),
            ToHarness::Logits => write_frame(w, tag::LOGITS, &[]),
            ToHarness::Failed(f) => write_frame(w, tag::FAILED, &json(f)),
        }
    }

    pub fn read(r: &mut impl Read) -> Result<ToHarness, WireError> {
        let (t, body) = read_frame(r)?;
        Self::decode(t, &body)
    }

    fn decode(t: u8, body: &[u8]) -> Result<ToHarness, WireError> {
        Ok(match t {
            tag::MODEL => ToHarness::Model(from_json(body, "Model")?),
            tag::NEXT_STEP => {
                let mut c = Cursor::new(body, "NextStep");
                let rows = c.u32()?;
                let report = match c.u32()? {
                    0 => None,
                    1 => Some(StepReport { loss: c.f64()?, lr_multiplier: c.f64()? }),
                    other => return Err(violation(format!("a NextStep message has report flag {other}"))),
                };
                c.end()?;
                ToHarness::NextStep { rows, report }
            }
            tag::DONE => ToHarness::TrainingDone(from_json(body, "TrainingDone")?),
            tag::READY => {
                Cursor::new(body, "Ready").end()?;
                ToHarness::Ready
            }
            tag::LOGITS => {
                Cursor::new(body, "Logits").end()?;
                ToHarness::Logits
            }
            tag::FAILED => ToHarness::Failed(from_json(body, "Failed")?),
            other => return Err(violation(format!("unknown message tag {other:#04x} from the trainer"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_trainer(m: ToTrainer) {
        let mut buf = Vec::new();
        m.write(&mut buf).unwrap();
        assert_eq!(ToTrainer::read(&mut buf.as_slice()).unwrap(), m);
    }

    fn round_trip_harness(m: ToHarness) {
        let mut buf = Vec::new();
        m.write(&mut buf).unwrap();
        assert_eq!(ToHarness::read(&mut buf.as_slice()).unwrap(), m);
    }

    fn hello_train() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            task: Task::Train,
            device: "flex".into(),
            seed: 42,
            class: "cpu".into(),
            dtype: "f32".into(),
            seq_len: 8,
            vocab_size: 300,
            bos_id: 296,
            device_batch_scale: 0.5,
            warmup_steps: 1,
            budget: "time:300".into(),
            hparams_override: Some("depth = 2".into()),
            model_dir: "/tmp/x/model".into(),
            shm_bytes: 0,
        }
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        round_trip_trainer(ToTrainer::Hello(Box::new(hello_train())));
        let mut evaluate = Hello { task: Task::Evaluate { rows: 16 }, shm_bytes: 16 * 300 * 4, ..hello_train() };
        evaluate.hparams_override = None;
        round_trip_trainer(ToTrainer::Hello(Box::new(evaluate)));
        round_trip_trainer(ToTrainer::Batch(TrainBatch {
            step: 3,
            epoch: 1,
            progress: 0.25,
            elapsed: 1.5,
            rows: 2,
            seq_len: 3,
            tokens: vec![1, 2, 3, 4, 5, 6, 7, 65535],
        }));
        round_trip_trainer(ToTrainer::Stop);
        round_trip_trainer(ToTrainer::Tokens(vec![9, 8, 65535]));
        round_trip_trainer(ToTrainer::Tokens(Vec::new()));
        round_trip_trainer(ToTrainer::Quit);
        round_trip_harness(ToHarness::Model(ModelInfo { num_params: 7, flops_per_token: 1e9, depth: 4 }));
        round_trip_harness(ToHarness::NextStep { rows: 16, report: None });
        round_trip_harness(ToHarness::NextStep { rows: 16, report: Some(StepReport { loss: f64::NAN.min(2.5), lr_multiplier: 1.0 }) });
        round_trip_harness(ToHarness::TrainingDone(Done { device_memory_mb: Some(12.5) }));
        round_trip_harness(ToHarness::Ready);
        round_trip_harness(ToHarness::Logits);
        round_trip_harness(ToHarness::Failed(Failure { kind: FailureKind::Diverged, message: "nan".into(), step: Some(3), loss: None }));
    }

    #[test]
    fn batch_rows_split_into_inputs_and_targets() {
        let b = TrainBatch { step: 0, epoch: 0, progress: 0.0, elapsed: 0.0, rows: 2, seq_len: 3, tokens: vec![1, 2, 3, 4, 5, 6, 7, 8] };
        assert_eq!(b.row(1), &[5, 6, 7, 8]);
        assert_eq!(b.inputs_and_targets(0, 2), (vec![1, 2, 3, 5, 6, 7], vec![2, 3, 4, 6, 7, 8]));
        assert_eq!(b.inputs_and_targets(1, 2), (vec![5, 6, 7], vec![6, 7, 8]));
    }

    #[test]
    fn malformed_frames_are_protocol_errors_not_panics() {
        // Oversized length.
        let mut buf = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        buf.push(tag::MODEL);
        assert!(matches!(ToHarness::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("over the limit")));
        // A batch whose token count does not match its rows.
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::BATCH, &Body::default().u64(0).u64(0).f64(0.0).f64(0.0).u32(2).u32(3).u16s(&[1, 2, 3]).0).unwrap();
        assert!(matches!(ToTrainer::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("short")));
        // Trailing bytes.
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::LOGITS, &[0]).unwrap();
        assert!(matches!(ToHarness::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("too many")));
        // Unknown tag, bad JSON, truncated stream, empty stream.
        let mut buf = Vec::new();
        write_frame(&mut buf, b'z', &[]).unwrap();
        assert!(matches!(ToHarness::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("unknown message tag")));
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::MODEL, b"{").unwrap();
        assert!(matches!(ToHarness::read(&mut buf.as_slice()), Err(WireError::Protocol(_))));
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::TOKENS, &Body::default().u32(2).u16s(&[1, 2]).0).unwrap();
        buf.truncate(buf.len() - 1);
        assert!(matches!(ToTrainer::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("ended inside")));
        assert!(matches!(ToHarness::read(&mut [].as_slice()), Err(WireError::Closed)));
        // A huge declared array length does not allocate.
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::TOKENS, &Body::default().u32(u32::MAX).0).unwrap();
        assert!(matches!(ToTrainer::read(&mut buf.as_slice()), Err(WireError::Protocol(_))));
        // Tokens whose count does not match what follows.
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::TOKENS, &Body::default().u32(3).u16s(&[1, 2]).0).unwrap();
        assert!(matches!(ToTrainer::read(&mut buf.as_slice()), Err(WireError::Protocol(m)) if m.contains("short")));
    }
}
