"""EKS fixture for the aws_iid `validate_eks_cluster_membership` tests, made through moto's
real AWS APIs (boto3, signed requests): a cluster with one managed node group, and the node
group's Auto Scaling group holding the given instance. moto's CreateNodegroup names an Auto
Scaling group (`eks-<uuid>`) but does not create it, so this script creates that group with
the Auto Scaling API and attaches the instance, as EKS does on AWS.

Usage: python eks_setup.py <moto endpoint> <output dir> <cluster> <instance id>...;
prints the fixture as JSON.
"""
import json
import sys

import boto3

endpoint, _out, cluster = sys.argv[1], sys.argv[2], sys.argv[3]
members = sys.argv[4:]
session = boto3.session.Session(
    aws_access_key_id="AKIDTESTFIXTURE", aws_secret_access_key="fixture-secret", region_name="us-east-1"
)
eks = session.client("eks", endpoint_url=endpoint)
autoscaling = session.client("autoscaling", endpoint_url=endpoint)
ec2 = session.client("ec2", endpoint_url=endpoint)

subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
role = "arn:aws:iam::123456789012:role/eks-node-role"
eks.create_cluster(name=cluster, roleArn=role, resourcesVpcConfig={"subnetIds": [subnet]})
nodegroup = eks.create_nodegroup(
    clusterName=cluster, nodegroupName=f"{cluster}-ng", nodeRole=role, subnets=[subnet]
)["nodegroup"]
asg = nodegroup["resources"]["autoScalingGroups"][0]["name"]
# A second node group whose Auto Scaling group is empty.
empty = eks.create_nodegroup(
    clusterName=cluster, nodegroupName=f"{cluster}-empty", nodeRole=role, subnets=[subnet]
)["nodegroup"]["resources"]["autoScalingGroups"][0]["name"]

for name, instances in ((asg, members), (empty, [])):
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        InstanceId=members[0],
        MinSize=0,
        MaxSize=5,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
    )
    if instances:
        autoscaling.attach_instances(AutoScalingGroupName=name, InstanceIds=instances)

in_group = sorted(
    i["InstanceId"]
    for g in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"]
    for i in g["Instances"]
)
print(json.dumps({"cluster": cluster, "nodegroup": nodegroup["nodegroupName"], "asg": asg, "asg_instances": in_group}))
