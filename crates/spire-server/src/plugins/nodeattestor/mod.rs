//! Server-side NodeAttestor plugins. `join_token` is handled by the agent API itself (the
//! token lives in the datastore), as upstream does; other attestors implement this trait.

pub mod join_token;
