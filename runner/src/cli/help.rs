//! The long help texts of the commands (`--help`), kept apart from the argument types so
//! that those read as a list of flags.

pub(super) const ABOUT: &str = "Autonomous research on a Rust GPT trainer: propose a change, train for a fixed budget, keep it if val_bpb improves.";

pub(super) const LONG_ABOUT: &str = "\
Autonomous research on a Rust GPT trainer (a port of karpathy/autoresearch).

Every experiment changes the `trainer` crate only, trains it for a fixed budget with the read-only \
`harness` (which owns the data, the clock and the metric), and is kept when val_bpb (validation \
bits per byte, lower is better) improves. Kept experiments advance the branch autoresearch/<tag>; \
every experiment, kept or not, stays reachable under refs/autoresearch/<tag>/<node>.

Typical session:
  autoresearch detect                   # hardware, platform profile, backend
  autoresearch train                    # one run of the current trainer (a sanity check)
  autoresearch run --max-experiments 50 # the loop (Ctrl-C, then `run --resume` to continue)
  autoresearch results                  # results.tsv as a table
  autoresearch watch                    # live view of a running loop (another terminal)
  autoresearch stop                     # stop a running loop as Ctrl-C does (from anywhere)
  autoresearch report                   # progress chart, tree picture, summary, report.html
  autoresearch serve                    # the same as a live page in the browser (loopback)
  autoresearch finalize                 # the kept changes as branches to review and merge
  autoresearch tree visualize           # the experiment tree";

pub(super) const AFTER_HELP: &str = "\
Exit codes:
  0    success
  1    failure (the error says what went wrong)
  2    usage: a bad flag, config key or value (the message names it)
  3    repository state: not a git repo, branch exists (use --resume), no such run
  4    cancelled at the confirmation prompt
  130  interrupted (Ctrl-C); `autoresearch run --resume` continues
  `train` exits with the harness's own code (0 ok, 1 diverged, 3 out of memory, 4 causality, ...)

Files:
  configs/research.toml        defaults for every `run` flag
  configs/search_space.toml    the built-in search's parameters and values
  configs/program.md           the coding agent's instructions
  .autoresearch/<tag>/         results.tsv (one row per experiment, reference format), tree.db
                               (SQLite), experiments.jsonl, logs/, runs/ (summaries and per-step
                               CSVs), runner.pid while the loop runs, autoresearch-summary.md;
                               `report` adds progress.png/.svg, tree.svg/.png, report.html;
                               `finalize` adds finalize.md (and branches autoresearch/<tag>-final/*)
  .worktrees/<tag>-n<id>       an experiment's checkout while it runs";

pub(super) const SERVE_LONG_ABOUT: &str = "\
The run as a live page in the browser: what `watch` shows (what runs now, with countdowns; the \
best; the last results) and what `report` shows (the progress chart, the summary with its \
held-out section, the tree; a node's diff one click away), updated as results arrive: the page \
listens to server-sent events and fetches the new state when the tree changes.

It only reads (the tree database opened read-only, git for diffs), so serving cannot disturb a \
run; it works during a run and after it. It listens on 127.0.0.1 unless --bind says otherwise, \
and answers only requests addressed to 127.0.0.1 or localhost there. The page is one HTML file \
with its script inline: nothing is loaded from anywhere else.

Examples:
  autoresearch serve                  # http://127.0.0.1:8077/
  autoresearch serve --tag dec02 --port 0
  ssh -L 8077:127.0.0.1:8077 gpu-box  # then open http://127.0.0.1:8077/ here";

pub(super) const FINALIZE_LONG_ABOUT: &str = "\
The kept changes of a run as independent branches a person can review and merge one by one.

Each kept change on the path from the baseline to the best is applied to the run's base commit \
alone (a three-way merge of its diff, like `git cherry-pick`) and gets a branch of its own, \
autoresearch/<tag>-final/NN-n<id>-<slug>. A change that touches lines an earlier kept change \
touched follows that change on its branch, as a commit of its own. Each commit message holds \
the change's description, hypothesis, measured gain over its parent with the standard error of \
the pooled noise, and its held-out figure where the run scored one. The summary \
(.autoresearch/<tag>/finalize.md) lists the branches, says whether merged together they give \
the best's code, and holds each branch's diff. Running it again makes the branches again; it \
is refused while the run's runner is running.

Examples:
  autoresearch finalize
  autoresearch finalize --tag dec02
  git log -p autoresearch/dec02-final/01-n4-matrix-lr-0-04";

pub(super) const BENCH_LONG_ABOUT: &str = "\
Training-step throughput of the trainer on every backend of the build, beside PyTorch.

Builds the workspace (unless --no-build), then runs the trainer's bench_step once per backend and \
size, each in its own process so its peak memory (VmHWM on CPU backends) is its own: the \
trainer's model and optimizer on random tokens, `--warmup` untimed steps, then `--steps` timed \
ones. Reports tokens/s, step time, MFU, peak memory, start-up and first-step time, and the loss \
after the last step (backends should agree). --vs-torch runs the PyTorch reference \
(../shared/bench/torch_reference.py, AdamW) at the same sizes in the same run and adds the \
ratios; only such side-by-side ratios mean anything on a shared machine. Writes bench.csv and \
bench.json under --out.

Sizes: small = 256x4:8x256 (d256, 4 layers, B8, T256), large = 512x8:4x1024, or \
WIDTHxDEPTH:BATCHxSEQ[:hHEADS].

  autoresearch bench --size small,large --vs-torch
  autoresearch bench --devices flex,tch-cpu --features tch --steps 20";

pub(super) const REPORT_LONG_ABOUT: &str = "\
Write pictures and a summary of a run into its directory, .autoresearch/<tag>/ (or --out DIR):
  progress.png, progress.svg   the metric of every experiment in order: kept, discarded and failed
                               styled apart, the best so far as a step line, kept changes labelled,
                               baseline and best marked
  tree.svg, tree.png           the experiment tree, coloured by status, best path highlighted,
                               pruned branches greyed (tree.svg nodes link to their diffs)
  autoresearch-summary.md      baseline, best, improvement, top improvements, what didn't work,
                               totals, recommended next directions
  report.html                  all of the above on one self-contained page, with every diff
It only reads the tree database and git, so it can run while the loop does.";

pub(super) const WATCH_LONG_ABOUT: &str = "\
A live terminal view of a run, redrawn every --interval seconds until Ctrl-C: the experiments in \
flight with a countdown (to the typical experiment length and to the hard timeout), the best so \
far against the baseline, and the last results. It reads the tree database only, in short read \
transactions, so it never disturbs the runner; start it in a second terminal. --once prints one \
view (for scripts).";

pub(super) const RUN_LONG_ABOUT: &str = "\
The research loop.

Setup: creates branch autoresearch/<tag> at HEAD (refuses an existing one unless --resume), hashes \
the read-only paths (sha256), builds the run's scorer (the harness) once, and runs the unmodified \
trainer as the baseline (--baseline-runs seeds, to measure run-to-run noise; they also score the \
held-out split).

Each experiment: the proposer picks a parent node and makes one change in a fresh worktree \
(.worktrees/<tag>-n<id>, checked out at the parent); the runner commits it (kept forever under \
refs/autoresearch/<tag>/n<id>), checks that only the scope changed and the read-only files still \
match their hashes (else `rejected`), builds the trainer in a sandbox and scores it with the run's \
scorer under a hard timeout (the whole process group is killed), retries once at half the device \
batch after an out-of-memory exit, applies the keep rule (significant: a one-sided test on the \
noise pooled over every repeated run, with up to --max-candidate-runs runs while the answer is \
open; at a time budget, a candidate whose tokens/s differ from the best's beyond their spread has \
the best run again beside it), runs --checks-command on a candidate the rule keeps (a failure is \
`checks_failed`), scores the held-out split on one more run of a kept node, moves the branch on a keep, \
appends a results.tsv row and a JSONL record, and removes the worktree. All worktrees share one \
cargo target directory (<repo>/target); each experiment's commit is synced into one build tree \
(<repo>/.autoresearch/.build), so only what an experiment changed recompiles.

It stops after --max-experiments, or earlier at --max-without-keep experiments in a row without a \
keep, --max-hours, or --max-cost dollars (the agent's reported costs plus --cost-per-hour).

Proposers: the built-in search; a coding agent by name (--agent claude, codex, gemini, opencode, \
aider: presets in configs/research.toml; `autoresearch detect` says which are installed) or by \
command line (--agent-command); any script (--proposer-command); a person (--proposer manual).

Every flag overrides the key of the same name in the research config (configs/research.toml). \
The resolved config is printed, and confirmed when stdin is a terminal (--yes skips).

Examples:
  autoresearch run --agent claude --max-hours 8 --checks-command 'sh checks.sh'
  autoresearch run --max-experiments 50 --max-without-keep 15";

pub(super) const HUMAN_LOOP: &str = "\
A person's experiment, step by step:
  autoresearch tree add --parent n4 --hypothesis \"...\" --description \"warmup 0.05\"   # prints n9
  autoresearch tree worktree n9        # checkout at n4's commit
  (edit trainer/ in .worktrees/<tag>-n9)
  autoresearch tree exec n9            # commit, build and score it as the loop does, record it
  autoresearch tree show n9            # its run, curve and timings
  autoresearch tree insight n9 \"warmup helps below 300 s\"
  autoresearch tree worktree n9 --remove
The loop decides it (keep or discard) when it next runs; with `run --proposer manual` running,
queued ideas are its next experiments, each at its own parent.
By hand instead of `tree exec`: `tree sync n9`, run it, `tree record n9 --summary-json FILE`.";

pub(super) const INSIGHT_LONG_ABOUT: &str = "\
Store the lesson learned from node N: what the experiment taught, whatever its status. \
`tree show` prints it and the agent proposer's prompt lists it next to the node. Replaces the \
previous insight (an empty TEXT clears it); an insight set while the loop runs the node is kept, \
the runner's own note added after it.

Examples:
  autoresearch tree insight n7 \"matrix_lr above 0.06 diverges at this depth\"
  autoresearch tree insight --tag nov25 7 \"\"        # clear it";

pub(super) const WORKTREE_LONG_ABOUT: &str = "\
Create the git worktree .worktrees/<tag>-n<N>, checked out (detached) at node N's commit, or, for \
a node without one (made by `tree add`), at the commit of its nearest ancestor that has one. \
Prints its path and the command that builds and runs the experiment there (all worktrees share \
the cargo target directory <repo>/target). An existing worktree is kept as it is. \
With --remove, removes it (refused while it has uncommitted changes, unless --force).

Examples:
  autoresearch tree worktree n9
  autoresearch tree worktree n9 --remove";

pub(super) const EXEC_LONG_ABOUT: &str = "\
Run node N's experiment exactly as the loop runs one. The change in its worktree \
(.worktrees/<tag>-n<N>) is committed; that commit is synced into the run's build tree \
(.autoresearch/.build), built in the build sandbox and scored by the run's scorer with the run's \
own settings (those its `run` started with): the profile snapshot, seed, budget, cache, device \
batch scale, signing key. It is the loop's first run of the experiment: log \
.autoresearch/<tag>/logs/n<N>-0.log, summary runs/n<N>-0.json, per-step CSV \
runs/n<N>-0.steps.csv. The result, its commit and its timings are recorded on N. A loop waiting \
for N (manual proposer) goes on from that run as from its own: it runs the confirmation runs its \
keep rule asks for and decides; `tree exec` waits for the decision and prints it (gain and bar). \
A queued idea (`tree add`) is decided when the loop next runs. Afterwards the main checkout's \
next cargo build compiles its own code, not the experiment's.

Examples:
  autoresearch tree exec n5
  autoresearch tree exec --tag dec02 5";

pub(super) const SYNC_LONG_ABOUT: &str = "\
Record the commit checked out in node N's worktree as N's commit. Uncommitted changes are \
committed first (message: the node's description and hypothesis). The commit stays reachable \
under refs/autoresearch/<tag>/n<N>, like the loop's. Prints `n<N> <commit>`. Only for a \
node of your own (made by `tree add`) that is not finished yet. Warns when the change touches \
paths outside the scope.

Examples:
  autoresearch tree sync n9";

