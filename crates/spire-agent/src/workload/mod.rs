//! The SPIFFE Workload API on the agent's unix socket (owned by the Workload API helper).
