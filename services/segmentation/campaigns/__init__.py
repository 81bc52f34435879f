"""Win-back campaigns: creation under an idempotency key, the member build, member lists, webhooks, uplift report.

No Flask here: views parse and dump, Celery tasks (campaigns/tasks.py) pass campaign ids.

- assignment: who is contacted (opt-outs, global control, frequency caps) and the hashed treatment/control split;
- create: a request resolved into a definition and stored under its idempotency key;
- build: the members of a campaign, one build at a time (see its docstring for the steps);
- members: a campaign and its members as the API shows them (pages and CSV);
- webhooks: signed delivery of the treatment members in batches;
- reports: orders since launch, treatment vs control, with the uplift from shared/statistics.py;
- tasks: the Celery tasks of the build and of webhook delivery.

The names below are the package's public interface.
"""

from services.segmentation.campaigns.assignment import (
    GROUPS,
    SKIP_REASONS,
    Candidate,
    Selection,
    in_global_control,
    select_members,
)
from services.segmentation.campaigns.build import (
    BuildInProgress,
    BuildResult,
    PersonalLists,
    audience_candidates,
    build_campaign,
    build_lock,
    mark_failed,
    personal_recommendations,
)
from services.segmentation.campaigns.create import (
    DEFAULT_AUDIENCE,
    CreateOutcome,
    MissingIdempotencyKey,
    create_win_back,
    request_hash,
    resolve_definition,
    validate_audience,
)
from services.segmentation.campaigns.members import (
    CSV_COLUMNS,
    campaign_to_dict,
    find_campaign,
    get_campaign,
    member_page,
    member_recommendation_id,
    member_to_dict,
    ready_campaign,
    stream_members_csv,
)
from services.segmentation.campaigns.reports import campaign_report
from services.segmentation.campaigns.webhooks import (
    WebhookPolicy,
    WebhookRetry,
    WebhookTarget,
    check_webhook_url,
    deliver_webhook_batch,
    forbidden_networks,
    give_up_webhook,
    post_to_checked_address,
    sign_body,
    webhook_body,
)
from shared.statistics import (
    GroupTotals,
    holdout_group,
    newcombe_interval,
    unit_hash,
    uplift_summary,
    wilson_interval,
)

__all__ = [
    "BuildInProgress", "BuildResult", "CSV_COLUMNS", "Candidate", "CreateOutcome", "DEFAULT_AUDIENCE", "GROUPS", "GroupTotals",
    "MissingIdempotencyKey", "PersonalLists", "SKIP_REASONS", "Selection", "WebhookRetry", "audience_candidates",
    "build_campaign", "build_lock", "campaign_report", "campaign_to_dict", "check_webhook_url", "create_win_back",
    "WebhookPolicy", "WebhookTarget", "deliver_webhook_batch", "post_to_checked_address", "find_campaign", "forbidden_networks", "get_campaign", "give_up_webhook",
    "holdout_group", "in_global_control", "mark_failed", "member_page", "member_recommendation_id", "member_to_dict", "newcombe_interval",
    "personal_recommendations", "ready_campaign", "request_hash", "resolve_definition", "select_members",
    "sign_body", "stream_members_csv", "unit_hash", "uplift_summary", "validate_audience", "webhook_body",
    "wilson_interval",
]
