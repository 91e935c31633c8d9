#!/usr/bin/env python3
"""moto_server as an ECS stand-in for bakery's tests.

  setup URL            create what an account has before bakery runs (a VPC with
                       DNS hostnames, a subnet, a security group, a cluster with
                       FARGATE and FARGATE_SPOT, two roles); keep tasks RUNNING
                       until stopped (moto otherwise advances a task one state
                       per DescribeTasks call); print the ids as JSON
  register URL FAMILY OWNER CONFIG
                       register a task definition as a controller would have
                       (OWNER/CONFIG tags; "-" for none)
  dump URL             print every task definition (with tags, any status),
                       every task of the cluster and the secrets' names as JSON
  stop URL TASK REASON stop a task the way ECS does when its container dies
  orphan URL SUBNET SG OWNER
                       run a task tagged bakery:owner=OWNER ("-" for none) that
                       no journal knows, as a crashed controller leaves one;
                       print its ARN
  secret URL NAME [VALUE...]
                       create the secret NAME with the first VALUE, then add
                       each later one as its new current version, each version
                       with the request token bakery-controller would give it
                       (the SHA-256 of the value, hex); without VALUE, print
                       its current value
"""
import hashlib
import json
import sys
import urllib.request

import boto3


def clients(endpoint):
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("ec2", **kw), boto3.client("ecs", **kw), boto3.client("iam", **kw)


def setup(endpoint):
    ec2, ecs, iam = clients(endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="bakery-agents", Description="agents", VpcId=vpc)["GroupId"]
    cluster = ecs.create_cluster(clusterName="bakery",
                                 capacityProviders=["FARGATE", "FARGATE_SPOT"])["cluster"]["clusterName"]
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    roles = {name: iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
             for name in ("bakery-agent-execution", "bakery-agent-task")}
    req = urllib.request.Request(
        endpoint + "/moto-api/state-manager/set-transition",
        data=json.dumps({"model_name": "ecs::task",
                         "transition": {"progression": "manual", "times": 1000000}}).encode(),
        method="POST")
    urllib.request.urlopen(req).read()
    print(json.dumps({"vpc": vpc, "subnet": subnet, "security_group": sg, "cluster": cluster,
                      "exec_role": roles["bakery-agent-execution"], "task_role": roles["bakery-agent-task"]}))


def register(endpoint, family, owner, config):
    _, ecs, _ = clients(endpoint)
    tags = [{"key": k, "value": v} for k, v in (("bakery:owner", owner), ("bakery:config", config)) if v != "-"]
    kw = dict(family=family, requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="512",
              memory="2048", containerDefinitions=[{"name": "agent", "image": "old/agent:0",
                                                    "cpu": 512, "memory": 2048, "essential": True}])
    if tags:
        kw["tags"] = tags
    print(ecs.register_task_definition(**kw)["taskDefinition"]["taskDefinitionArn"])


def dump(endpoint):
    _, ecs, _ = clients(endpoint)
    defs = []
    for status in ("ACTIVE", "INACTIVE"):
        for arn in ecs.list_task_definitions(status=status)["taskDefinitionArns"]:
            out = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
            td = out["taskDefinition"]
            td["tags"] = out.get("tags", [])
            defs.append(td)
    arns = ecs.list_tasks(cluster="bakery")["taskArns"] + \
        ecs.list_tasks(cluster="bakery", desiredStatus="STOPPED")["taskArns"]
    tasks = ecs.describe_tasks(cluster="bakery", tasks=sorted(set(arns)))["tasks"] if arns else []
    sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    secrets = [{"name": s["Name"], "arn": s["ARN"]} for s in sm.list_secrets()["SecretList"]]
    print(json.dumps({"task_definitions": defs, "tasks": tasks, "secrets": secrets}, default=str))


def orphan(endpoint, subnet, security_group, owner):
    _, ecs, _ = clients(endpoint)
    arn = ecs.register_task_definition(
        family="orphan-agent", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="512",
        memory="2048", containerDefinitions=[{"name": "agent", "image": "old/agent:0",
                                              "cpu": 512, "memory": 2048, "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    kw = dict(cluster="bakery", taskDefinition=arn, launchType="FARGATE",
              networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet],
                                                            "securityGroups": [security_group]}})
    if owner != "-":
        kw["tags"] = [{"key": "bakery:owner", "value": owner}]
    print(ecs.run_task(**kw)["tasks"][0]["taskArn"])


def secret(endpoint, name, *values):
    sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    if not values:
        # The version staged AWSCURRENT, named: it is what Secrets Manager
        # returns by default and what ECS reads, but moto 5 returns the last
        # version written instead once UpdateSecretVersionStage has moved
        # AWSCURRENT elsewhere.
        print(sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"])
        return
    token = lambda v: hashlib.sha256(v.encode()).hexdigest()
    sm.create_secret(Name=name, SecretString=values[0], ClientRequestToken=token(values[0]))
    for value in values[1:]:
        sm.put_secret_value(SecretId=name, SecretString=value, ClientRequestToken=token(value))


def stop(endpoint, task, reason):
    _, ecs, _ = clients(endpoint)
    ecs.stop_task(cluster="bakery", task=task, reason=reason)


if __name__ == "__main__":
    command, endpoint, *rest = sys.argv[1:]
    {"setup": setup, "register": register, "dump": dump, "stop": stop,
     "orphan": orphan, "secret": secret}[command](endpoint, *rest)
