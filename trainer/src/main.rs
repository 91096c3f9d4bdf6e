//! The trainer executable. The harness starts it in a sandbox and talks to it over the
//! descriptors it leaves open; `experiment::child::main` connects, builds the device, and either
//! calls [`trainer::train`] and saves the model it returns (the training process), or rebuilds
//! that model with [`trainer::load`] and answers the harness's evaluation with it (a process per
//! group of evaluation rows).

fn main() {
    experiment::child::main(trainer::train, trainer::load)
}
