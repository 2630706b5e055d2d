"""Azure's built-in roles that matter to a Batch account, with the ids and permissions Azure
gives them: the general Owner, Contributor and Reader, and the Azure Batch roles. Written to the
store at every start (service/roles.py), so a new Shoal corrects older rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinRole:
    id: str
    name: str
    description: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()


BUILTIN_ROLES: tuple[BuiltinRole, ...] = (
    BuiltinRole("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner",
                "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
                actions=("*",)),
    BuiltinRole("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor",
                "Grants full access to manage all resources, but does not allow you to assign roles in Azure "
                "RBAC, manage assignments in Azure Blueprints, or share image galleries.",
                actions=("*",),
                not_actions=("Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
                             "Microsoft.Authorization/elevateAccess/Action",
                             "Microsoft.Blueprint/blueprintAssignments/write",
                             "Microsoft.Blueprint/blueprintAssignments/delete",
                             "Microsoft.Compute/galleries/share/action")),
    BuiltinRole("acdd72a7-3385-48ef-bd42-f606fba81ae7", "Reader",
                "View all resources, but does not allow you to make any changes.",
                actions=("*/read",)),
    BuiltinRole("29fe4964-1e60-436b-bd3a-77fd4c178b3c", "Azure Batch Account Contributor",
                "Grants full access to manage all Batch resources, including Batch accounts, pools and jobs.",
                actions=("Microsoft.Authorization/*/read", "Microsoft.Batch/*", "Microsoft.Insights/alertRules/*",
                         "Microsoft.Resources/deployments/*", "Microsoft.Resources/subscriptions/resourceGroups/read"),
                data_actions=("Microsoft.Batch/*",)),
    BuiltinRole("11076f67-66f6-4be0-8f6b-f0609fd05cc9", "Azure Batch Account Reader",
                "Lets you view all resources including pools and jobs in the Batch account.",
                actions=("Microsoft.Batch/*/read", "Microsoft.Resources/subscriptions/resourceGroups/read"),
                data_actions=("Microsoft.Batch/*/read",)),
    BuiltinRole("6aaa78f1-f7de-44ca-8722-c64a23943cae", "Azure Batch Data Contributor",
                "Grants permissions to manage Batch pools and jobs but not to modify accounts.",
                actions=("Microsoft.Authorization/*/read", "Microsoft.Batch/batchAccounts/read",
                         "Microsoft.Batch/batchAccounts/applications/*", "Microsoft.Batch/batchAccounts/certificates/*",
                         "Microsoft.Batch/batchAccounts/certificateOperationResults/*",
                         "Microsoft.Batch/batchAccounts/pools/*", "Microsoft.Batch/batchAccounts/poolOperationResults/*",
                         "Microsoft.Batch/locations/*/read", "Microsoft.Insights/alertRules/*",
                         "Microsoft.Resources/deployments/*", "Microsoft.Resources/subscriptions/resourceGroups/read"),
                data_actions=("Microsoft.Batch/batchAccounts/jobSchedules/*", "Microsoft.Batch/batchAccounts/jobs/*")),
    BuiltinRole("48e5e92e-a480-4e71-aa9c-2778f4c13781", "Azure Batch Job Submitter",
                "Lets you submit and manage jobs in the Batch account.",
                actions=("Microsoft.Batch/batchAccounts/applications/read",
                         "Microsoft.Batch/batchAccounts/applications/versions/read",
                         "Microsoft.Batch/batchAccounts/pools/read", "Microsoft.Insights/alertRules/*",
                         "Microsoft.Resources/subscriptions/resourceGroups/read"),
                data_actions=("Microsoft.Batch/batchAccounts/jobSchedules/*", "Microsoft.Batch/batchAccounts/jobs/*")),
)
