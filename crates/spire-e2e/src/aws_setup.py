"""Test fixtures for the AWS plugin tests, made through moto's real AWS APIs (boto3, signed
requests) plus the instance identity documents a loopback IMDS serves, signed with test keys
the way AWS signs them (legacy RSA-SHA256 `signature`, PKCS#7 `rsa2048`).

Usage: python aws_setup.py <moto endpoint> <output dir>; prints the fixture as JSON.
"""
import base64
import datetime
import json
import sys

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

endpoint, out = sys.argv[1], sys.argv[2]
region = "us-east-1"
session = boto3.session.Session(
    aws_access_key_id="AKIDTESTFIXTURE", aws_secret_access_key="fixture-secret", region_name=region
)
ec2 = session.client("ec2", endpoint_url=endpoint)
iam = session.client("iam", endpoint_url=endpoint)
sm = session.client("secretsmanager", endpoint_url=endpoint)
sts = session.client("sts", endpoint_url=endpoint)
account = sts.get_caller_identity()["Account"]

sg = ec2.create_security_group(GroupName="spire-agents", Description="SPIRE agents")["GroupId"]
role = iam.create_role(
    RoleName="spire-node-role",
    AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
)["Role"]["Arn"]
iam.create_instance_profile(InstanceProfileName="spire-node-profile", Path="/nodes/")
iam.add_role_to_instance_profile(InstanceProfileName="spire-node-profile", RoleName="spire-node-role")
image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def run_instance(name):
    reservation = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t2.micro",
        SecurityGroupIds=[sg],
        Placement={"AvailabilityZone": "us-east-1a"},
        IamInstanceProfile={"Name": "spire-node-profile"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}, {"Key": "role", "Value": "frontend"}]}
        ],
    )
    return reservation["Instances"][0]["InstanceId"]


instances = [run_instance("web-1"), run_instance("web-2"), run_instance("web-3")]
# Stopped instances are not attestable (upstream filters on pending/running).
stopped = run_instance("stopped")
ec2.stop_instances(InstanceIds=[stopped])

now = datetime.datetime.now(datetime.timezone.utc)


def make_ca(cn, not_before, not_after):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services LLC (test)"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


trusted_key, trusted_cert = make_ca("Test IID CA", now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
rogue_key, rogue_cert = make_ca("Rogue IID CA", now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
expired_key, expired_cert = make_ca("Expired IID CA", now - datetime.timedelta(days=800), now - datetime.timedelta(days=400))

with open(f"{out}/iid-ca.pem", "wb") as f:
    for c in (trusted_cert, expired_cert):
        f.write(c.public_bytes(serialization.Encoding.PEM))


def document(instance_id, account_id=None):
    return json.dumps(
        {
            "accountId": account_id or account,
            "architecture": "x86_64",
            "availabilityZone": "us-east-1a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": image,
            "instanceId": instance_id,
            "instanceType": "t2.micro",
            "kernelId": None,
            "pendingTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "privateIp": "10.0.0.10",
            "ramdiskId": None,
            "region": region,
            "version": "2017-09-30",
        },
        indent=2,
    )


def wrap(b64):
    return "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))


def sign(doc, key, cert, signed_doc=None):
    signed = (signed_doc or doc).encode()
    legacy = base64.b64encode(key.sign(signed, padding.PKCS1v15(), hashes.SHA256())).decode()
    p7 = pkcs7.PKCS7SignatureBuilder().set_data(signed).add_signer(cert, key, hashes.SHA256()).sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return {"document": doc, "signature": legacy, "rsa2048": wrap(base64.b64encode(p7).decode())}


docs = {
    "valid": sign(document(instances[0]), trusted_key, trusted_cert),
    "second": sign(document(instances[1]), trusted_key, trusted_cert),
    "legacy_only": dict(sign(document(instances[2]), trusted_key, trusted_cert), rsa2048=""),
    # The document changed after signing: another instance claimed with instance 0's signature.
    "forged": sign(document(instances[1]), trusted_key, trusted_cert, signed_doc=document(instances[0])),
    "forged_legacy": dict(sign(document(instances[1]), trusted_key, trusted_cert, signed_doc=document(instances[0])), rsa2048=""),
    "wrong_signer": sign(document(instances[0]), rogue_key, rogue_cert),
    "wrong_signer_legacy": dict(sign(document(instances[0]), rogue_key, rogue_cert), rsa2048=""),
    "expired": sign(document(instances[0]), expired_key, expired_cert),
    "stopped": sign(document(stopped), trusted_key, trusted_cert),
    "unsigned": {"document": document(instances[0]), "signature": "", "rsa2048": ""},
    # verify_organization: a validly signed document of an account outside the organization.
    "other_account": sign(document(instances[0], "999999999999"), trusted_key, trusted_cert),
}

# verify_organization: the fixture account is the management account of an organization
# with one more member account.
org = session.client("organizations", endpoint_url=endpoint)
org.create_organization(FeatureSet="ALL")
org.create_account(Email="member@example.org", AccountName="member")
org_accounts = sorted(a["Id"] for a in org.list_accounts()["Accounts"] if a["Status"] == "ACTIVE")

# awssecret: an upstream CA (self-signed) whose certificate and key live in Secrets Manager.
ua_key, ua_cert = make_ca("Upstream CA in Secrets Manager", now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
key_pem = ua_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
cert_pem = ua_cert.public_bytes(serialization.Encoding.PEM).decode()
secrets = {
    "key_arn": sm.create_secret(Name="spire/upstream-ca-key", SecretString=key_pem)["ARN"],
    "cert_arn": sm.create_secret(Name="spire/upstream-ca-cert", SecretString=cert_pem)["ARN"],
    "cert_pem": cert_pem,
}

print(
    json.dumps(
        {
            "account": account,
            "region": region,
            "image": image,
            "instances": instances,
            "security_group": sg,
            "role_arn": role,
            "ca_path": f"{out}/iid-ca.pem",
            "docs": docs,
            "secrets": secrets,
            "org_accounts": org_accounts,
        }
    )
)
