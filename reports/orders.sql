/*
title: Orders
description: One row per order, with the customer's name and email.
source: demo
params:
  since:  {type: date, help: First day included (UTC).}
  until:  {type: date, after: since, help: First day not included (UTC).}
  status: {type: choice, choices: [pending, paid, shipped, cancelled, refunded],
           help: Only orders in this status.}
*/
SELECT o.id, o.created_at, c.name AS customer_name, c.email AS customer_email,
       o.status, o.amount
FROM "order" o
JOIN customer c ON c.id = o.customer_id
WHERE (:since IS NULL OR o.created_at >= :since)
  AND (:until IS NULL OR o.created_at < :until)
  AND (:status IS NULL OR o.status = :status)
ORDER BY o.id
