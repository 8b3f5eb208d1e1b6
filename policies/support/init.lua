-- Policy pack "support": customer-support requests.
--
-- Templates are ways of asking a model to help with a request; the reward comes from the
-- ticket's outcome: resolved, escalated to a human, time to resolve, the customer's
-- rating (CSAT 1..5), and whether the ticket was reopened.

local pd = require "promptd"

pd.set_pack_name("support")

local function looks_like_error(n)
    return n:find("error", 1, true) or n:find("fail", 1, true) or n:find("crash", 1, true) or
        n:find("not working", 1, true) or n:find("报错", 1, true) or n:find("失败", 1, true)
end

local function mentions_order(msg)
    return msg.attrs.order_id ~= nil or msg.normalized:find("order", 1, true) ~= nil or
        msg.normalized:find("订单", 1, true) ~= nil
end

local function request(msg)
    return pd.interp("Customer ${attrs.customer|(anonymous)} on the ${attrs.plan|free} plan " ..
                     "writes:\n\"\"\"\n${text}\n\"\"\"", msg, { max = 4000 })
end

return {
    name = "support",
    templates = {
        {
            name = "answer_directly",
            about = "Answer the customer's question directly and briefly.",
            render = function(msg)
                return request(msg) .. "\n\nAnswer in at most four sentences, friendly and " ..
                    "precise. If you are not sure, say so rather than guess."
            end,
        },
        {
            name = "clarify",
            about = "Ask the one clarifying question that would unblock the request.",
            render = function(msg)
                return request(msg) .. "\n\nDo not answer yet. Ask the single most useful " ..
                    "clarifying question, and say briefly why you need it."
            end,
        },
        {
            name = "troubleshoot",
            about = "Walk the customer through troubleshooting steps for an error or failure.",
            eligible = function(msg) return looks_like_error(msg.normalized) ~= nil end,
            render = function(msg)
                return request(msg) .. "\n\nGive numbered troubleshooting steps, simplest " ..
                    "first, each with what the customer should see if it worked."
            end,
        },
        {
            name = "order_status",
            about = "Explain an order's status and the next step for it.",
            eligible = mentions_order,
            render = function(msg)
                return request(msg) .. "\n\n" ..
                    pd.interp("The order in question is ${attrs.order_id|not given}. ", msg) ..
                    "Explain what its status means and what happens next, and when."
            end,
        },
        {
            name = "escalate",
            about = "Prepare a handover of the request to a human agent.",
            render = function(msg)
                return request(msg) .. "\n\nWrite a handover note for a human agent: the " ..
                    "request in one line, what the customer already tried, the customer's " ..
                    "mood, and the suggested next action."
            end,
        },
    },
    reward = function(event, decision)
        if event.resolved == nil and event.rating == nil and event.escalated == nil then
            return nil
        end
        local r = 0
        if event.resolved then r = r + 1 end
        if event.escalated then r = r - 0.7 end
        if event.reopened then r = r - 0.5 end
        if type(event.time_to_resolve_s) == "number" then
            r = r + 0.3 * math.max(0, 1 - event.time_to_resolve_s / 86400)
        end
        if type(event.rating) == "number" then
            r = r + (math.min(5, math.max(1, event.rating)) - 3) / 4
        end
        return r
    end,
    feature_names = { "length", "looks_like_error", "mentions_order", "paid_plan" },
    features = function(msg)
        return {
            math.min(1, #msg.text / 2000),
            looks_like_error(msg.normalized) and 1 or 0,
            mentions_order(msg) and 1 or 0,
            (msg.attrs.plan and msg.attrs.plan ~= "free") and 1 or 0,
        }
    end,
}
