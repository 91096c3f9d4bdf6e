//! The stop rules besides `max_experiments`: experiments in a row without a keep, the hours
//! the run has been going, and what it has cost. Once one is reached the loop starts no new
//! experiment and lets those in flight finish.

use crate::config::ResearchConfig;
use crate::db::{Node, Status};

/// The meta key of the seconds runners have spent on the run before this one started (each
/// `--resume` adds its own).
pub const ACTIVE_SECONDS: &str = "active_seconds";

/// Finished experiments since the last keep, in the order they finished.
pub fn without_keep(nodes: &[Node]) -> u64 {
    let mut done: Vec<&Node> = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).collect();
    done.sort_by_key(|n| n.finish_seq);
    done.iter().rev().take_while(|n| n.status != Status::Keep).count() as u64
}

/// What the run has cost so far: what its agents reported, and `cost_per_hour` for each hour.
pub fn cost(cfg: &ResearchConfig, active_seconds: f64, agent_cost: f64) -> f64 {
    agent_cost + cfg.cost_per_hour * active_seconds / 3600.0
}

/// Why the loop must start no new experiment, if a stop rule says so.
pub fn reached(cfg: &ResearchConfig, nodes: &[Node], active_seconds: f64, agent_cost: f64) -> Option<String> {
    let dry = without_keep(nodes);
    if cfg.max_without_keep > 0 && dry >= cfg.max_without_keep {
        return Some(format!("{dry} experiments in a row without a keep (max_without_keep {})", cfg.max_without_keep));
    }
    let hours = active_seconds / 3600.0;
    if cfg.max_hours > 0.0 && hours >= cfg.max_hours {
        return Some(format!("the run has been going {hours:.2} h (max_hours {})", cfg.max_hours));
    }
    let spent = cost(cfg, active_seconds, agent_cost);
    if cfg.max_cost > 0.0 && spent >= cfg.max_cost {
        return Some(format!(
            "the run has cost ${spent:.2}: ${agent_cost:.2} reported by the agent, {hours:.2} h x ${} (max_cost {})",
            cfg.cost_per_hour, cfg.max_cost
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::blank_node;

    fn finished(id: i64, seq: i64, status: Status) -> Node {
        Node { parent: (id > 1).then_some(1), finish_seq: Some(seq), status, ..blank_node(id) }
    }

    #[test]
    fn each_rule_stops_at_its_limit_and_not_before() {
        // Finish order, not id order: n4 (a discard) finished after n3 (a keep).
        let nodes = [finished(1, 1, Status::Keep), finished(2, 2, Status::Discard), finished(4, 5, Status::Crash), finished(3, 3, Status::Keep), finished(5, 4, Status::Discard)];
        assert_eq!(without_keep(&nodes), 2);
        let cfg = |f: &dyn Fn(&mut ResearchConfig)| {
            let mut c = ResearchConfig::default();
            f(&mut c);
            c
        };
        assert_eq!(reached(&cfg(&|_| {}), &nodes, 1e9, 1e9), None, "no rule set, none reached");
        assert!(reached(&cfg(&|c| c.max_without_keep = 2), &nodes, 0.0, 0.0).unwrap().contains("2 experiments in a row without a keep"));
        assert_eq!(reached(&cfg(&|c| c.max_without_keep = 3), &nodes, 0.0, 0.0), None);
        assert!(reached(&cfg(&|c| c.max_hours = 1.0), &nodes, 3600.0, 0.0).unwrap().contains("1.00 h (max_hours 1)"));
        assert_eq!(reached(&cfg(&|c| c.max_hours = 1.0), &nodes, 3599.0, 0.0), None);
        let priced = cfg(&|c| {
            c.max_cost = 10.0;
            c.cost_per_hour = 4.0;
        });
        assert_eq!(reached(&priced, &nodes, 3600.0, 5.0), None, "$9 spent");
        assert!(reached(&priced, &nodes, 3600.0, 6.0).unwrap().contains("$10.00: $6.00 reported by the agent, 1.00 h x $4"));
    }
}
