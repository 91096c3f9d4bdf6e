//! The trainer executable. The harness starts it in a sandbox and talks to it over the
//! descriptors it leaves open; `prepare::child::main` connects, builds the device, calls
//! [`trainer::train`] and answers the harness's evaluation with the model it returns.

fn main() {
    prepare::child::main(trainer::train)
}
