//! `spire.api.server.localauthority.v1.LocalAuthority`: lets operators drive CA rotation by
//! hand (prepare, activate, taint, revoke) for the X.509 and JWT authorities. Every RPC maps
//! to one CA manager call; the CA manager checks the state machine.

use std::sync::Arc;

use spire_proto::spire::api::server::localauthority::v1 as pb;
use spire_proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthority;
use tonic::{Request, Response, Status};

use super::ApiContext;
use super::audit::AuditLog;
use super::convert::{ca_status, wit_svids_unsupported};

/// The local authority service.
pub struct LocalAuthorityApi {
    ctx: Arc<ApiContext>,
}

impl LocalAuthorityApi {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }
}

impl LocalAuthorityApi {
    /// Upstream's refusal of every JWT authority RPC under `disable_jwt_svids`.
    fn check_jwt_enabled(&self) -> Result<(), Status> {
        if self.ctx.settings.disable_jwt_svids {
            return Err(Status::unimplemented("JWT functionality is disabled"));
        }
        Ok(())
    }
}

/// Refuses an empty authority ID before it reaches the CA.
fn authority_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no authority ID provided"));
    }
    Ok(id)
}

#[tonic::async_trait]
impl LocalAuthority for LocalAuthorityApi {
    async fn get_jwt_authority_state(
        &self,
        _request: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::GetJwtAuthorityStateResponse>, Status> {
        self.check_jwt_enabled()?;
        let (active, prepared, old) = self.ctx.ca.jwt_authority_states().await;
        Ok(Response::new(pb::GetJwtAuthorityStateResponse {
            active,
            prepared,
            old,
        }))
    }

    async fn prepare_jwt_authority(
        &self,
        _request: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::PrepareJwtAuthorityResponse>, Status> {
        self.check_jwt_enabled()?;
        let state = self
            .ctx
            .ca
            .prepare_jwt_authority()
            .await
            .map_err(|e| ca_status("failed to prepare JWT authority", &e))?;
        Ok(Response::new(pb::PrepareJwtAuthorityResponse {
            prepared_authority: Some(state),
        }))
    }

    async fn activate_jwt_authority(
        &self,
        request: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::ActivateJwtAuthorityResponse>, Status> {
        self.check_jwt_enabled()?;
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .activate_jwt_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to activate JWT authority", &e))?;
        Ok(Response::new(pb::ActivateJwtAuthorityResponse {
            activated_authority: Some(state),
        }))
    }

    async fn taint_jwt_authority(
        &self,
        request: Request<pb::TaintJwtAuthorityRequest>,
    ) -> Result<Response<pb::TaintJwtAuthorityResponse>, Status> {
        self.check_jwt_enabled()?;
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .taint_jwt_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to taint JWT authority", &e))?;
        Ok(Response::new(pb::TaintJwtAuthorityResponse {
            tainted_authority: Some(state),
        }))
    }

    async fn revoke_jwt_authority(
        &self,
        request: Request<pb::RevokeJwtAuthorityRequest>,
    ) -> Result<Response<pb::RevokeJwtAuthorityResponse>, Status> {
        self.check_jwt_enabled()?;
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .revoke_jwt_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to revoke JWT authority", &e))?;
        Ok(Response::new(pb::RevokeJwtAuthorityResponse {
            revoked_authority: Some(state),
        }))
    }

    async fn get_x509_authority_state(
        &self,
        _request: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::GetX509AuthorityStateResponse>, Status> {
        let (active, prepared, old) = self.ctx.ca.x509_authority_states().await;
        Ok(Response::new(pb::GetX509AuthorityStateResponse {
            active,
            prepared,
            old,
        }))
    }

    async fn prepare_x509_authority(
        &self,
        _request: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::PrepareX509AuthorityResponse>, Status> {
        let state = self
            .ctx
            .ca
            .prepare_x509_authority()
            .await
            .map_err(|e| ca_status("failed to prepare X.509 authority", &e))?;
        Ok(Response::new(pb::PrepareX509AuthorityResponse {
            prepared_authority: Some(state),
        }))
    }

    async fn activate_x509_authority(
        &self,
        request: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::ActivateX509AuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .activate_x509_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to activate X.509 authority", &e))?;
        Ok(Response::new(pb::ActivateX509AuthorityResponse {
            activated_authority: Some(state),
        }))
    }

    async fn taint_x509_authority(
        &self,
        request: Request<pb::TaintX509AuthorityRequest>,
    ) -> Result<Response<pb::TaintX509AuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .taint_x509_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to taint X.509 authority", &e))?;
        Ok(Response::new(pb::TaintX509AuthorityResponse {
            tainted_authority: Some(state),
        }))
    }

    async fn taint_x509_upstream_authority(
        &self,
        request: Request<pb::TaintX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::TaintX509UpstreamAuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("subject_key_id", request.subject_key_id.as_str());
        let skid = self
            .ctx
            .ca
            .taint_x509_upstream_authority(&request.subject_key_id)
            .await
            .map_err(|e| ca_status("failed to taint upstream authority", &e))?;
        Ok(Response::new(pb::TaintX509UpstreamAuthorityResponse {
            upstream_authority_subject_key_id: skid,
        }))
    }

    async fn revoke_x509_authority(
        &self,
        request: Request<pb::RevokeX509AuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509AuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("local_authority_id", request.authority_id.as_str());
        let state = self
            .ctx
            .ca
            .revoke_x509_authority(authority_id(&request.authority_id)?)
            .await
            .map_err(|e| ca_status("failed to revoke X.509 authority", &e))?;
        Ok(Response::new(pb::RevokeX509AuthorityResponse {
            revoked_authority: Some(state),
        }))
    }

    async fn revoke_x509_upstream_authority(
        &self,
        request: Request<pb::RevokeX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509UpstreamAuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("subject_key_id", request.subject_key_id.as_str());
        let skid = self
            .ctx
            .ca
            .revoke_x509_upstream_authority(&request.subject_key_id)
            .await
            .map_err(|e| ca_status("failed to revoke X.509 upstream authority", &e))?;
        Ok(Response::new(pb::RevokeX509UpstreamAuthorityResponse {
            upstream_authority_subject_key_id: skid,
        }))
    }

    async fn get_wit_authority_state(
        &self,
        _request: Request<pb::GetWitAuthorityStateRequest>,
    ) -> Result<Response<pb::GetWitAuthorityStateResponse>, Status> {
        Err(wit_svids_unsupported())
    }

    async fn prepare_wit_authority(
        &self,
        _request: Request<pb::PrepareWitAuthorityRequest>,
    ) -> Result<Response<pb::PrepareWitAuthorityResponse>, Status> {
        Err(wit_svids_unsupported())
    }

    async fn activate_wit_authority(
        &self,
        _request: Request<pb::ActivateWitAuthorityRequest>,
    ) -> Result<Response<pb::ActivateWitAuthorityResponse>, Status> {
        Err(wit_svids_unsupported())
    }

    async fn taint_wit_authority(
        &self,
        _request: Request<pb::TaintWitAuthorityRequest>,
    ) -> Result<Response<pb::TaintWitAuthorityResponse>, Status> {
        Err(wit_svids_unsupported())
    }

    async fn revoke_wit_authority(
        &self,
        _request: Request<pb::RevokeWitAuthorityRequest>,
    ) -> Result<Response<pb::RevokeWitAuthorityResponse>, Status> {
        Err(wit_svids_unsupported())
    }
}
