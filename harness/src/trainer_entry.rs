//! The one call into the editable trainer.
//!
//! TEMPORARY: `trainer::train` does not exist yet; until it does, this stub refuses to train.
//! Replace the body with `trainer::train(ctx)` once trainer/src/lib.rs exports it.

use prepare::experiment::{TrainContext, TrainError, TrainedModel};

/// Calls the trainer.
pub fn train(ctx: TrainContext<'_>) -> Result<TrainedModel, TrainError> {
    let _ = ctx;
    Err(TrainError::Other(anyhow::anyhow!(
        "trainer::train is not implemented yet (harness/src/trainer_entry.rs is a stub)"
    )))
}
