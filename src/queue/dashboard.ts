/** bull-board, mounted by the HTTP layer at /admin/queues behind the admin token. */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Router } from 'express';
import type { QueueRegistry } from './index.js';

export function createDashboardRouter(queues: QueueRegistry, basePath: string): Router {
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(basePath);
  createBullBoard({
    queues: queues.dashboardQueues().map((q) => new BullMQAdapter(q, { readOnlyMode: false })),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'fhir-anchor queues' } },
  });
  return serverAdapter.getRouter() as Router;
}
