//! Deploy: hand-over, runner, journal, atomic switch, rollback, service control.
