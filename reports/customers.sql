/*
title: Customers
description: One row per customer with their order count and total spent.
source: demo
params:
  min_orders: {type: int, default: 0, min: 0,
               help: Only customers with at least this many orders.}
*/
SELECT c.id, c.name, c.email, COUNT(o.id) AS orders,
       COALESCE(SUM(o.amount), 0.00) AS total_spent
FROM customer c
LEFT JOIN "order" o ON o.customer_id = c.id
GROUP BY c.id, c.name, c.email
HAVING COUNT(o.id) >= :min_orders
ORDER BY c.id
