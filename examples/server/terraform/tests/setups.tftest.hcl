# Plans of the example's setups against a mocked AWS provider (no account,
# no network): `terraform test` in the example's directory. The test suite
# runs it (controller/tests/terraform.rs).

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  # The provider checks that these are ARNs.
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/bakery-controller/50dc6c495c0c9188" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/bakery-controller/73e2d6bc24d8a067" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/bakery-role" }
  }
  mock_resource "aws_iam_policy" {
    defaults = { arn = "arn:aws:iam::123456789012:policy/bakery-policy" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/bakery-cluster" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/bakery-controller:1" }
  }
}

variables {
  region         = "eu-west-1"
  context_bucket = "acme-bakery-contexts"
}

run "kubernetes_only_needs_no_vpc" {
  command = plan
  variables {
    ecs_agents     = false
    server_runs_on = "eks-pod-identity"
  }
  assert {
    condition     = length(aws_ecs_cluster.bakery) == 0 && length(aws_security_group.agents) == 0
    error_message = "a Kubernetes-only setup creates no ECS cluster or agent security group"
  }
  assert {
    condition     = length(aws_iam_role.agent_pod) == 1
    error_message = "the agent pods get their role"
  }
  assert {
    condition     = !contains(keys(output.controller_env), "ECS_CLUSTER")
    error_message = "no ECS settings in the controller's environment"
  }
}

run "ecs_agents_need_a_vpc" {
  command = plan
  variables {
    ecs_agents = true
  }
  expect_failures = [var.vpc_id, var.subnet_ids]
}

run "ecs_agents" {
  command = plan
  variables {
    vpc_id     = "vpc-0abc"
    subnet_ids = ["subnet-0a", "subnet-0b"]
  }
  assert {
    condition     = length(aws_ecs_cluster.bakery) == 1 && length(aws_ecs_service.controller) == 0
    error_message = "the agents' cluster, and no controller service unless asked"
  }
  assert {
    condition     = output.controller_env["ECS_SUBNETS"] == "subnet-0a,subnet-0b"
    error_message = "ECS_SUBNETS"
  }
}

run "controller_on_ecs_needs_a_certificate" {
  command = plan
  variables {
    vpc_id            = "vpc-0abc"
    subnet_ids        = ["subnet-0a", "subnet-0b"]
    controller_on_ecs = true
    controller_image  = "ghcr.io/example/bakery-controller:1"
  }
  expect_failures = [var.certificate_arn, var.controller_url]
}

run "controller_on_ecs" {
  # apply: against the mock, so the task definition's JSON is known.
  command = apply
  variables {
    vpc_id            = "vpc-0abc"
    subnet_ids        = ["subnet-0a", "subnet-0b"]
    controller_on_ecs = true
    controller_image  = "ghcr.io/example/bakery-controller:1"
    certificate_arn   = "arn:aws:acm:eu-west-1:123456789012:certificate/abc"
    controller_url    = "https://bakery.example.com"
    controller_secrets = {
      CONTROLLER_TOKEN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:bakery/token-AbCdEf"
    }
  }
  assert {
    condition = (aws_ecs_service.controller[0].desired_count == 1
      && aws_ecs_service.controller[0].deployment_minimum_healthy_percent == 0
    && aws_ecs_service.controller[0].deployment_maximum_percent == 100)
    error_message = "one task, the old one stopped before the new one starts"
  }
  assert {
    condition     = aws_lb.controller[0].idle_timeout == 3600 && aws_lb_listener.controller[0].protocol == "HTTPS"
    error_message = "an HTTPS listener and a one-hour idle timeout"
  }
  assert {
    condition = (aws_efs_access_point.controller[0].posix_user[0].uid == 65532
    && aws_efs_access_point.controller[0].root_directory[0].creation_info[0].owner_uid == 65532)
    error_message = "DATA_DIR is created and entered as the image's user"
  }
  assert {
    condition     = length(aws_efs_mount_target.controller) == 2
    error_message = "a mount target in each subnet"
  }
  assert {
    condition     = contains(jsondecode(aws_ecs_task_definition.controller[0].container_definitions)[0].environment, { name = "CONTROLLER_URL", value = "https://bakery.example.com" })
    error_message = "the agents are told the load balancer's address"
  }
  assert {
    condition = (!strcontains(jsonencode(jsondecode(aws_ecs_task_definition.controller[0].container_definitions)[0].environment), "CONTROLLER_TOKEN")
    && jsondecode(aws_ecs_task_definition.controller[0].container_definitions)[0].secrets[0].name == "CONTROLLER_TOKEN")
    error_message = "secrets are references (valueFrom), never values"
  }
  assert {
    condition     = output.controller_url == "https://bakery.example.com"
    error_message = "controller_url output"
  }
}

run "one_efs_mount_target_per_zone" {
  command = apply
  variables {
    vpc_id            = "vpc-0abc"
    subnet_ids        = ["subnet-0a", "subnet-0b"]
    controller_on_ecs = true
    controller_image  = "ghcr.io/example/bakery-controller:1"
    certificate_arn   = "arn:aws:acm:eu-west-1:123456789012:certificate/abc"
    controller_url    = "https://bakery.example.com"
  }
  # Both subnets in one zone: EFS would refuse a second mount target there.
  override_data {
    target = data.aws_subnet.controller
    values = { availability_zone = "eu-west-1a" }
  }
  assert {
    condition     = length(aws_efs_mount_target.controller) == 1
    error_message = "one mount target per availability zone"
  }
}
