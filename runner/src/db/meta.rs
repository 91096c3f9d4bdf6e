//! The run's key-value store: the config it started with, and what the loop remembers.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::Db;

impl Db {
    /// The config the run started with (stored at its start), so that a later edit of
    /// configs/research.toml, or a flag given to that start only, does not change how its
    /// experiments run or are judged; `fallback` where the database holds none.
    pub fn run_config(&self, fallback: &crate::config::ResearchConfig) -> Result<crate::config::ResearchConfig> {
        let stored = match self.meta("config")? {
            Some(text) => match serde_json::from_str::<crate::config::ResearchConfig>(&text) {
                Ok(cfg) => Some(cfg),
                Err(e) => {
                    // Written by another version: say so rather than pass today's settings off
                    // as the run's.
                    eprintln!(
                        "note: {}: the run's stored config does not parse ({e}); using the current config and flags instead; the autoresearch version that made the run reads its own settings",
                        self.conn.path().unwrap_or("the tree database")
                    );
                    None
                }
            },
            None => None,
        };
        let mut cfg = stored.unwrap_or_else(|| fallback.clone());
        if cfg.tag.is_empty() {
            cfg.tag = fallback.tag.clone();
        }
        Ok(cfg)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
