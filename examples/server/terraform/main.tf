# The AWS side of bakery's ECS platform: a Fargate cluster with on-demand and
# Spot capacity, the context bucket, the agents' security group, and the three
# sets of permissions of the README (server, agent execution, agent task),
# plus the client's upload policy.

data "aws_caller_identity" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  # The issuer an IRSA condition names: the provider ARN without its prefix.
  oidc_issuer = replace(var.irsa_oidc_provider_arn, "/^.*oidc-provider//", "")
}

# ---- cluster ---------------------------------------------------------------

resource "aws_ecs_cluster" "bakery" {
  #checkov:skip=CKV_AWS_65:Container Insights bills per task for agents that live minutes; bakery's own /metrics cover builds and agents.
  count = var.ecs_agents ? 1 : 0
  name  = "${var.name}-cluster"
}

resource "aws_ecs_cluster_capacity_providers" "bakery" {
  count              = var.ecs_agents ? 1 : 0
  cluster_name       = aws_ecs_cluster.bakery[0].name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "agents" {
  #checkov:skip=CKV_AWS_158:The agents' own diagnostics, no secret (bakery redacts them); CloudWatch encrypts at rest already, a customer key is the operator's choice.
  #checkov:skip=CKV_AWS_338:Debugging output of finished agents: 14 days, not a year; the build logs live in the controller's journal.
  count             = var.ecs_agents && var.log_group != "" ? 1 : 0
  name              = var.log_group
  retention_in_days = 14
}

# ---- context bucket ---------------------------------------------------------

resource "aws_s3_bucket" "contexts" {
  #checkov:skip=CKV_AWS_18:Access logs need a second bucket; the controller records who built what, with which context.
  #checkov:skip=CKV_AWS_21:Objects are content addressed and never rewritten: versions would only keep deleted contexts.
  #checkov:skip=CKV_AWS_144:Contexts are transient copies of repositories (expired after context_retention_days): no replica is needed.
  #checkov:skip=CKV_AWS_145:SSE-S3 encrypts every object (S3's default); a KMS key would need kms:Decrypt for every agent and CI role.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events.
  bucket = var.context_bucket
}

resource "aws_s3_bucket_public_access_block" "contexts" {
  bucket                  = aws_s3_bucket.contexts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Contexts travel over TLS only: plain-HTTP requests are refused whoever
# makes them.
resource "aws_s3_bucket_policy" "contexts_tls_only" {
  bucket = aws_s3_bucket.contexts.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyPlainHttp"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.contexts.arn, "${aws_s3_bucket.contexts.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.contexts]
}

resource "aws_s3_bucket_lifecycle_configuration" "contexts" {
  bucket = aws_s3_bucket.contexts.id

  rule {
    id     = "expire-contexts"
    status = "Enabled"
    filter {
      prefix = "contexts/"
    }
    expiration {
      days = var.context_retention_days
    }
  }

  # A client killed mid-upload leaves the parts it sent: they are billed
  # until aborted.
  rule {
    id     = "abort-unfinished-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# ---- network: agents need egress only ---------------------------------------

resource "aws_security_group" "agents" {
  #checkov:skip=CKV_AWS_382:Agents pull base images from and push to registries anywhere, and reach S3 and the controller; no inbound rule.
  #checkov:skip=CKV2_AWS_5:The controller attaches it to each agent task (ECS_SECURITY_GROUPS at RunTask), outside Terraform.
  count       = var.ecs_agents ? 1 : 0
  name        = "${var.name}-agents"
  description = "bakery agents: outbound to S3, the controller and registries; no inbound"
  vpc_id      = var.vpc_id

  egress {
    description = "S3, Controller, container registries"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# ---- agent execution role (ECS pulls the image, writes logs) -----------------

# Tasks of this account only (the confused-deputy guard AWS recommends for
# ecs-tasks.amazonaws.com).
data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:ecs:${var.region}:${local.account}:*"]
    }
  }
}

resource "aws_iam_role" "agent_execution" {
  count              = var.ecs_agents ? 1 : 0
  name               = "${var.name}-agent-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy_attachment" "agent_execution_managed" {
  count      = var.ecs_agents ? 1 : 0
  role       = aws_iam_role.agent_execution[0].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# ECS reads the agent image's registry login when it pulls the image: the
# secret bakery-controller creates (${var.name}/agent-image-registry) or the
# one AGENT_IMAGE_SECRET_ARN names. Harmless when the image is public.
resource "aws_iam_role_policy" "agent_execution_image_secret" {
  count = var.ecs_agents ? 1 : 0
  name  = "agent-image-secret"
  role  = aws_iam_role.agent_execution[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "PullAgentImageFromPrivateRegistry"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = local.image_secret_arns
    }]
  })
}

# ---- agent task role (the agent downloads its context) -----------------------

resource "aws_iam_role" "agent_task" {
  count              = var.ecs_agents ? 1 : 0
  name               = "${var.name}-agent-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

# Reading contexts: the agents' one AWS permission. A managed policy, so
# that agent pods on Kubernetes (below) can have it too.
resource "aws_iam_policy" "read_contexts" {
  name        = "${var.name}-read-contexts"
  description = "bakery agents: download build contexts"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "DownloadBuildContext"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${aws_s3_bucket.contexts.arn}/*"
      },
      {
        Sid      = "ListContextBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = aws_s3_bucket.contexts.arn
      },
    ]
  })
}

resource "aws_iam_role_policy_attachment" "agent_task" {
  count      = var.ecs_agents ? 1 : 0
  role       = aws_iam_role.agent_task[0].name
  policy_arn = aws_iam_policy.read_contexts.arn
}

# Pods on EKS (server_runs_on = eks-pod-identity or irsa) assume their role
# as the Kustomize example's service accounts: bakery-server for the
# controller's role, bakery-agent for the agent pods' (below).
data "aws_iam_policy_document" "pod_trust" {
  for_each = toset(["bakery-server", "bakery-agent"])
  dynamic "statement" {
    for_each = var.server_runs_on == "eks-pod-identity" ? [1] : []
    content {
      actions = ["sts:AssumeRole", "sts:TagSession"]
      principals {
        type        = "Service"
        identifiers = ["pods.eks.amazonaws.com"]
      }
    }
  }
  dynamic "statement" {
    for_each = var.server_runs_on == "irsa" ? [1] : []
    content {
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [var.irsa_oidc_provider_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:sub"
        values   = ["system:serviceaccount:bakery:${each.key}"]
      }
      condition {
        test     = "StringEquals"
        variable = "${local.oidc_issuer}:aud"
        values   = ["sts.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "agent_pod" {
  count              = var.server_runs_on == "ecs" ? 0 : 1
  name               = "${var.name}-agent-pod"
  assume_role_policy = data.aws_iam_policy_document.pod_trust["bakery-agent"].json
}

resource "aws_iam_role_policy_attachment" "agent_pod" {
  count      = var.server_runs_on == "ecs" ? 0 : 1
  role       = aws_iam_role.agent_pod[0].name
  policy_arn = aws_iam_policy.read_contexts.arn
}

# ---- server (controller) permissions -----------------------------------------
#
# Exactly the calls bakery-controller makes (the test suite checks every ECS
# and Secrets Manager request it sends against this list):
# its own task definitions (<name>-agent-*), tasks in
# this cluster only, the agent image login under ${var.name}/, and passing
# the two agent roles to ECS tasks only.

locals {
  cluster_arn       = one(aws_ecs_cluster.bakery[*].arn)
  cluster_tasks     = "arn:aws:ecs:${var.region}:${local.account}:task/${var.name}-cluster/*"
  image_secret_name = "${var.name}/agent-image-registry"
  image_secret_arns = compact([
    # Secrets Manager appends a random 6-character suffix to a secret's ARN.
    "arn:aws:secretsmanager:${var.region}:${local.account}:secret:${local.image_secret_name}-*",
    var.agent_image_secret_arn,
  ])
}

resource "aws_iam_policy" "server" {
  count       = var.ecs_agents ? 1 : 0
  name        = "${var.name}-server"
  description = "bakery-controller: run and clean up agent tasks on ECS"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Its own families only: <name>-agent-<arch>-<size>.
        Sid      = "RegisterAgentTaskDefinitions"
        Effect   = "Allow"
        Action   = ["ecs:RegisterTaskDefinition"]
        Resource = "arn:aws:ecs:${var.region}:${local.account}:task-definition/${var.name}-agent-*"
      },
      {
        # These take no resource ARN (IAM's list for ECS).
        Sid    = "FindAndCleanUpAgentTaskDefinitions"
        Effect = "Allow"
        Action = [
          "ecs:DescribeTaskDefinition",
          "ecs:DeregisterTaskDefinition",
          "ecs:ListTaskDefinitions",
          "ecs:ListTaskDefinitionFamilies",
        ]
        Resource = "*"
      },
      {
        # Task definitions and tasks are tagged with the owner as they are
        # created, and nothing else is tagged.
        Sid      = "TagWhatItCreates"
        Effect   = "Allow"
        Action   = ["ecs:TagResource"]
        Resource = "*"
        Condition = {
          StringEquals = { "ecs:CreateAction" = ["RunTask", "RegisterTaskDefinition"] }
        }
      },
      {
        # Its own task definitions only, in this cluster.
        Sid      = "RunAgentTasksInThisCluster"
        Effect   = "Allow"
        Action   = ["ecs:RunTask"]
        Resource = "arn:aws:ecs:${var.region}:${local.account}:task-definition/${var.name}-agent-*"
        Condition = {
          ArnEquals = { "ecs:cluster" = local.cluster_arn }
        }
      },
      {
        Sid      = "WatchTasksInThisCluster"
        Effect   = "Allow"
        Action   = ["ecs:DescribeTasks"]
        Resource = local.cluster_tasks
      },
      {
        # ListTasks names no task: ECS authorizes it on the cluster.
        Sid      = "FindOrphansInThisCluster"
        Effect   = "Allow"
        Action   = ["ecs:ListTasks"]
        Resource = "*"
        Condition = {
          ArnEquals = { "ecs:cluster" = local.cluster_arn }
        }
      },
      {
        # Beyond the original README: bakery stops every task it started
        # (success, failure, timeout, cancel) and, at start-up, the ones
        # tagged with its owner that no build knows: its own tasks only.
        Sid      = "StopOwnAgentTasks"
        Effect   = "Allow"
        Action   = ["ecs:StopTask"]
        Resource = local.cluster_tasks
        Condition = {
          ArnEquals    = { "ecs:cluster" = local.cluster_arn }
          StringEquals = { "aws:ResourceTag/bakery:owner" = var.name }
        }
      },
      {
        Sid    = "AgentImageCredentials"
        Effect = "Allow"
        # Created from AGENT_IMAGE_USERNAME/PASSWORD on first start, and
        # updated when the password changes (a password changed back to an
        # earlier one makes that version current again:
        # UpdateSecretVersionStage); AGENT_IMAGE_SECRET_ARN is read.
        Action = [
          "secretsmanager:CreateSecret",
          "secretsmanager:DescribeSecret",
          "secretsmanager:PutSecretValue",
          "secretsmanager:UpdateSecretVersionStage",
        ]
        Resource = local.image_secret_arns
      },
      {
        Sid      = "PassAgentRoles"
        Effect   = "Allow"
        Action   = ["iam:PassRole"]
        Resource = [aws_iam_role.agent_execution[0].arn, aws_iam_role.agent_task[0].arn]
        Condition = {
          StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" }
        }
      },
    ]
  })
}

# Who may be the controller: an ECS task (default), a pod on EKS through
# EKS Pod Identity, or a pod through IRSA (an OIDC provider of the cluster).
resource "aws_iam_role" "server" {
  name               = "${var.name}-server"
  assume_role_policy = var.server_runs_on == "ecs" ? data.aws_iam_policy_document.ecs_tasks_trust.json : data.aws_iam_policy_document.pod_trust["bakery-server"].json
}

resource "aws_iam_role_policy_attachment" "server" {
  count      = var.ecs_agents ? 1 : 0
  role       = aws_iam_role.server.name
  policy_arn = aws_iam_policy.server[0].arn
}

# ---- client (CI job) permissions ---------------------------------------------

# One prefix for every repository, not one each: contexts are content
# addressed (contexts/sha256-<digest of the archive>), so identical contexts
# are stored once, and a CI job can read another repository's context only
# if it already knows the SHA-256 of that exact archive. A prefix per
# repository would need keys bakery does not use and would store shared
# contexts twice. What the client may touch is narrowed to that prefix.
resource "aws_iam_policy" "client" {
  name        = "${var.name}-client"
  description = "bakery client: upload build contexts"
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "UploadBuildContext"
        Effect   = "Allow"
        Action   = ["s3:PutObject"]
        Resource = "${aws_s3_bucket.contexts.arn}/contexts/*"
      },
      {
        # Beyond the original README: the client asks (HeadObject) before it
        # uploads, so an unchanged context is never sent twice. HeadObject needs
        # s3:GetObject, and s3:ListBucket makes a missing object a 404, not a 403.
        Sid      = "SkipUnchangedContexts"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${aws_s3_bucket.contexts.arn}/contexts/*"
      },
      {
        # Without a condition: S3 checks it for HeadObject with no prefix
        # in the request, so an s3:prefix condition would make a missing
        # context a 403 again. A listing shows content hashes only.
        Sid      = "MissingContextsAre404"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = aws_s3_bucket.contexts.arn
      },
    ]
  })
}

# ---- the controller's environment (outputs.tf, controller.tf) ---------------

locals {
  controller_env = merge(
    {
      AWS_REGION   = var.region
      S3_REGION    = var.region
      S3_BUCKET    = aws_s3_bucket.contexts.bucket
      BAKERY_OWNER = var.name
    },
    var.ecs_agents ? {
      ECS_CLUSTER          = aws_ecs_cluster.bakery[0].name
      ECS_SUBNETS          = join(",", var.subnet_ids)
      ECS_SECURITY_GROUPS  = aws_security_group.agents[0].id
      ECS_EXEC_ROLE_ARN    = aws_iam_role.agent_execution[0].arn
      ECS_TASK_ROLE_ARN    = aws_iam_role.agent_task[0].arn
      ECS_LOG_GROUP        = var.log_group
      ECS_ASSIGN_PUBLIC_IP = tostring(var.assign_public_ip)
    } : {},
  )
}
