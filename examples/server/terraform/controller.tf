# bakery-controller itself as an ECS Fargate service (controller_on_ecs):
# one task behind an HTTPS load balancer, its DATA_DIR (the build journal) on
# EFS so that a replaced task resumes the builds under way.
#
# - One task, never two: a deployment stops the old task before it starts the
#   new one (minimum healthy 0 %, maximum 100 %). Two controllers of one owner
#   would take each other's agents for orphans.
# - The load balancer's idle timeout is an hour: `bakery` follows a build's
#   log on one long-lived response, which goes quiet during a long RUN step.
# - EFS's root directory is root-owned 0755; the controller image runs as
#   uid/gid 65532, so it gets an access point that creates its directory as
#   65532 and enters it as 65532.

locals {
  controller    = var.controller_on_ecs ? 1 : 0
  lb_subnet_ids = length(var.lb_subnet_ids) > 0 ? var.lb_subnet_ids : var.subnet_ids
  # The image's user (distroless "nonroot").
  controller_uid = 65532
}

# ---- network ------------------------------------------------------------------

resource "aws_security_group" "lb" {
  count       = local.controller
  name        = "${var.name}-controller-lb"
  description = "bakery controller load balancer: HTTPS from CI jobs and agents"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "lb_from_clients" {
  for_each          = var.controller_on_ecs ? toset(var.client_cidrs) : toset([])
  security_group_id = aws_security_group.lb[0].id
  description       = "HTTPS from CI jobs"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# Agents reach an internal load balancer from their security group. An
# internet-facing one resolves to public addresses even inside the VPC, so
# agents arrive from their NAT gateway's address: keep that address in
# client_cidrs if you narrow it (or set lb_internal).
resource "aws_vpc_security_group_ingress_rule" "lb_from_agents" {
  count                        = local.controller
  security_group_id            = aws_security_group.lb[0].id
  description                  = "HTTPS from the agents (check-in, logs, results)"
  referenced_security_group_id = aws_security_group.agents[0].id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_egress_rule" "lb_to_controller" {
  count                        = local.controller
  security_group_id            = aws_security_group.lb[0].id
  description                  = "To the controller task"
  referenced_security_group_id = aws_security_group.controller[0].id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_security_group" "controller" {
  count       = local.controller
  name        = "${var.name}-controller"
  description = "bakery controller task: from its load balancer only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "controller_from_lb" {
  count                        = local.controller
  security_group_id            = aws_security_group.controller[0].id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.lb[0].id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_vpc_security_group_egress_rule" "controller_out" {
  count             = local.controller
  security_group_id = aws_security_group.controller[0].id
  description       = "AWS APIs, registries (the index), OIDC issuers, GitHub/GitLab, EFS"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_security_group" "efs" {
  count       = local.controller
  name        = "${var.name}-controller-data"
  description = "bakery controller DATA_DIR: NFS from the controller task only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_controller" {
  count                        = local.controller
  security_group_id            = aws_security_group.efs[0].id
  description                  = "NFS from the controller task"
  referenced_security_group_id = aws_security_group.controller[0].id
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
}

# ---- DATA_DIR on EFS ------------------------------------------------------------

resource "aws_efs_file_system" "controller" {
  count          = local.controller
  creation_token = "${var.name}-controller-data"
  encrypted      = true
  tags           = { Name = "${var.name}-controller-data" }
}

# EFS takes one mount target per availability zone: the first of the
# subnets in each zone.
data "aws_subnet" "controller" {
  for_each = var.controller_on_ecs ? toset(var.subnet_ids) : toset([])
  id       = each.value
}

resource "aws_efs_mount_target" "controller" {
  for_each = {
    for zone, ids in { for s in data.aws_subnet.controller : s.availability_zone => s.id... } :
    zone => sort(ids)[0]
  }
  file_system_id  = aws_efs_file_system.controller[0].id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs[0].id]
}

resource "aws_efs_access_point" "controller" {
  count          = local.controller
  file_system_id = aws_efs_file_system.controller[0].id
  posix_user {
    uid = local.controller_uid
    gid = local.controller_uid
  }
  root_directory {
    path = "/bakery"
    creation_info {
      owner_uid   = local.controller_uid
      owner_gid   = local.controller_uid
      permissions = "0750"
    }
  }
}

# ---- load balancer ----------------------------------------------------------------

resource "aws_lb" "controller" {
  #checkov:skip=CKV2_AWS_28:Every call is authenticated (OIDC or CONTROLLER_TOKEN) and rate-limited by the controller; a WAF is the operator's choice.
  count                      = local.controller
  name                       = "${var.name}-controller"
  load_balancer_type         = "application"
  internal                   = var.lb_internal
  subnets                    = local.lb_subnet_ids
  security_groups            = [aws_security_group.lb[0].id]
  idle_timeout               = 3600
  drop_invalid_header_fields = true
}

resource "aws_lb_target_group" "controller" {
  count       = local.controller
  name        = "${var.name}-controller"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # A replaced task's open log streams end at once; clients reconnect.
  deregistration_delay = 10
  health_check {
    path    = "/healthz"
    matcher = "200"
  }
}

resource "aws_lb_listener" "controller" {
  count             = local.controller
  load_balancer_arn = aws_lb.controller[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.controller[0].arn
  }
}

# ---- the task -------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "controller" {
  count             = local.controller
  name              = "/${var.name}/controller"
  retention_in_days = 30
}

resource "aws_iam_role" "controller_execution" {
  count              = local.controller
  name               = "${var.name}-controller-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy_attachment" "controller_execution_managed" {
  count      = local.controller
  role       = aws_iam_role.controller_execution[0].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# ECS reads the controller's secrets (controller_secrets) when it starts the
# task: Secrets Manager secrets or SSM parameters, by ARN.
resource "aws_iam_role_policy" "controller_execution_secrets" {
  count = var.controller_on_ecs && length(var.controller_secrets) > 0 ? 1 : 0
  name  = "controller-secrets"
  role  = aws_iam_role.controller_execution[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [for arns in [[for a in values(var.controller_secrets) : a if startswith(a, "arn:aws:secretsmanager:")]] : {
        Sid      = "ReadControllerSecrets"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = arns
      } if length(arns) > 0],
      [for arns in [[for a in values(var.controller_secrets) : a if startswith(a, "arn:aws:ssm:")]] : {
        Sid      = "ReadControllerParameters"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = arns
      } if length(arns) > 0],
    )
  })
}

resource "aws_ecs_task_definition" "controller" {
  count                    = local.controller
  family                   = "${var.name}-controller"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.controller_execution[0].arn
  task_role_arn            = aws_iam_role.server.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.controller_arch
  }
  volume {
    name = "data"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.controller[0].id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.controller[0].id
      }
    }
  }
  container_definitions = jsonencode([{
    name      = "controller"
    image     = var.controller_image
    essential = true
    user      = "${local.controller_uid}:${local.controller_uid}"
    # Fargate's longest: on SIGTERM the controller ends its streams and
    # closes its journal; its agents go on, and the next task resumes them.
    stopTimeout            = 120
    readonlyRootFilesystem = true
    linuxParameters        = { initProcessEnabled = true }
    portMappings           = [{ containerPort = 8080, protocol = "tcp" }]
    mountPoints            = [{ sourceVolume = "data", containerPath = "/data", readOnly = false }]
    environment = [for k, v in merge(local.controller_env, var.controller_environment, {
      LISTEN_ADDR = "0.0.0.0:8080"
      DATA_DIR    = "/data"
      # The address agents and CI jobs reach it at: the load balancer.
      CONTROLLER_URL = var.controller_url
    }) : { name = k, value = v }]
    secrets = [for k, v in var.controller_secrets : { name = k, valueFrom = v }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.controller[0].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "controller"
      }
    }
  }])
}

resource "aws_ecs_service" "controller" {
  count           = local.controller
  name            = "${var.name}-controller"
  cluster         = aws_ecs_cluster.bakery[0].arn
  task_definition = aws_ecs_task_definition.controller[0].arn
  desired_count   = 1
  launch_type     = "FARGATE"
  # Stop the old task before the new one starts: never two controllers.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  health_check_grace_period_seconds  = 60
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.controller[0].id]
    assign_public_ip = var.assign_public_ip
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.controller[0].arn
    container_name   = "controller"
    container_port   = 8080
  }
  depends_on = [aws_lb_listener.controller, aws_efs_mount_target.controller]
}
