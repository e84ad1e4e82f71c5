/**
 * The CapabilityStatement served at /fhir/R4/metadata. It is assembled from what the running build
 * actually implements: each stage registers its resource interactions and operations here, so the
 * statement grows with the code and never claims more.
 */
import type { CapabilityStatement, CapabilityStatementRestResource, CapabilityStatementRestResourceOperation } from '@medplum/fhirtypes';

export interface CapabilityContribution {
  readonly resources?: readonly CapabilityStatementRestResource[];
  readonly operations?: readonly CapabilityStatementRestResourceOperation[];
  readonly securityDescription?: string;
}

export function buildCapabilityStatement(options: {
  readonly baseUrl: string;
  readonly version: string;
  readonly date: Date;
  readonly contributions: readonly CapabilityContribution[];
}): CapabilityStatement {
  const resources = new Map<string, CapabilityStatementRestResource>();
  const operations: CapabilityStatementRestResourceOperation[] = [];
  const security: string[] = [];
  for (const c of options.contributions) {
    for (const r of c.resources ?? []) {
      const existing = resources.get(r.type as string);
      resources.set(r.type as string, existing ? { ...existing, ...r, interaction: [...(existing.interaction ?? []), ...(r.interaction ?? [])] } : r);
    }
    operations.push(...(c.operations ?? []));
    if (c.securityDescription) security.push(c.securityDescription);
  }
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: options.date.toISOString(),
    publisher: 'fhir-anchor',
    kind: 'instance',
    software: { name: 'fhir-anchor', version: options.version },
    implementation: { description: 'fhir-anchor FHIR R4 endpoint', url: `${options.baseUrl}/fhir/R4` },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        documentation:
          'Only the interactions listed here are implemented. Anything else answers 404 or 400 with an OperationOutcome.',
        ...(security.length > 0 ? { security: { description: security.join(' ') } } : {}),
        resource: [...resources.values()].sort((a, b) => String(a.type).localeCompare(String(b.type))),
        ...(operations.length > 0 ? { operation: operations } : {}),
      },
    ],
  };
}
