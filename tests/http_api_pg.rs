//! The in-process HTTP suite of `tests/http_api`, every test of it, with
//! the servers' metadata on PostgreSQL: a throwaway cluster per test
//! process and a fresh database per server (`tests/common/postgres.rs`).
//! The harness picks the engine from this target's name (`…_pg`), so a
//! plain `cargo test` runs it; `FERRY_TEST_DATABASE=postgres` does the
//! same for any other suite of in-process servers.

#[path = "http_api/main.rs"]
mod suite;
