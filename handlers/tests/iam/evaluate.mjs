// Evaluates AWS requests against the roles of the deployment template, as AWS
// evaluates them, with @cloud-copilot/iam-simulate (identity policies, resource
// policies, every condition operator, action and resource-type validation from
// the Service Authorization Reference's data).
//
// Reads one JSON document on stdin:
//   { template, parameters, account, region, attributes,
//     requests: [{ role, action, resource, context, resourcePolicy? }] }
// `template` is the template's path; `parameters` the stack's parameter values
// (defaults fill the rest); `attributes` overrides `Logical.Attribute` values
// the template cannot know (a table's stream ARN, a security group's id).
// Writes one JSON array: per request { decision, ignored, error? }.
//
// Template intrinsics are resolved as CloudFormation resolves them (Ref, Fn::Sub,
// Fn::GetAtt, Fn::If with the template's Conditions, Fn::Join, Fn::Select,
// Fn::Equals/Not/And/Or, AWS::NoValue); physical names come from the resources'
// name properties.

import { readFileSync } from 'node:fs'
import yaml from 'js-yaml'
import { runSimulation, runUnsafeSimulation } from '@cloud-copilot/iam-simulate'
import { loadPolicy } from '@cloud-copilot/iam-policy'

// runUnsafeSimulation loads a resource policy without a name, and its analysis
// reads the name: give a nameless policy one.
const policyPrototype = Object.getPrototypeOf(loadPolicy({ Version: '2012-10-17', Statement: [] }))
const metadata = policyPrototype.metadata
policyPrototype.metadata = function () {
  return metadata.call(this) ?? { name: 'resource-policy' }
}

const input = JSON.parse(readFileSync(0, 'utf8'))
const { account, region } = input
const partition = 'aws'

// CloudFormation's short-form tags, read as their long forms.
const tags = [
  ['Ref', 'scalar', (v) => ({ Ref: v })],
  ['Condition', 'scalar', (v) => ({ Condition: v })],
  ['GetAtt', 'scalar', (v) => ({ 'Fn::GetAtt': v.split('.') })],
  ['GetAtt', 'sequence', (v) => ({ 'Fn::GetAtt': v })]
]
for (const fn of ['Sub', 'Join', 'If', 'Equals', 'Not', 'And', 'Or', 'Select', 'Split', 'Base64', 'GetAZs', 'FindInMap', 'ImportValue', 'Cidr']) {
  for (const kind of ['scalar', 'sequence', 'mapping']) {
    tags.push([fn, kind, (v) => ({ [`Fn::${fn}`]: v })])
  }
}
const schema = yaml.DEFAULT_SCHEMA.extend(
  tags.map(([name, kind, construct]) => new yaml.Type(`!${name}`, { kind, construct }))
)
const template = yaml.load(readFileSync(input.template, 'utf8'), { schema })
const resources = template.Resources

const parameters = {}
for (const [name, p] of Object.entries(template.Parameters ?? {})) {
  const value = input.parameters?.[name] ?? p.Default
  if (value === undefined) continue
  parameters[name] = p.Type?.startsWith('List<') || p.Type === 'CommaDelimitedList'
    ? (Array.isArray(value) ? value : String(value).split(','))
    : String(value)
}

const NO_VALUE = Symbol('AWS::NoValue')

function fail(message) {
  throw new Error(message)
}

function pseudo(name) {
  switch (name) {
    case 'AWS::Region': return region
    case 'AWS::AccountId': return account
    case 'AWS::Partition': return partition
    case 'AWS::URLSuffix': return 'amazonaws.com'
    case 'AWS::StackName': return parameters.Prefix ?? 'jitr'
    case 'AWS::NoValue': return NO_VALUE
    default: return undefined
  }
}

function nameOf(id) {
  const r = resources[id] ?? fail(`no resource ${id}`)
  const props = r.Properties ?? {}
  const key = {
    'AWS::IAM::Role': 'RoleName',
    'AWS::IAM::ManagedPolicy': 'ManagedPolicyName',
    'AWS::IAM::InstanceProfile': 'InstanceProfileName',
    'AWS::SQS::Queue': 'QueueName',
    'AWS::DynamoDB::Table': 'TableName',
    'AWS::Events::EventBus': 'Name',
    'AWS::Events::Rule': 'Name',
    'AWS::Lambda::Function': 'FunctionName',
    'AWS::SNS::Topic': 'TopicName',
    'AWS::EC2::SecurityGroup': 'GroupName'
  }[r.Type]
  if (!key || props[key] === undefined) fail(`${id} (${r.Type}) has no name the evaluation can resolve`)
  return resolve(props[key])
}

function ref(name) {
  const p = pseudo(name)
  if (p !== undefined) return p
  if (name in parameters) return parameters[name]
  if (input.attributes?.[`${name}.Ref`]) return input.attributes[`${name}.Ref`]
  const r = resources[name] ?? fail(`Ref to unknown ${name}`)
  switch (r.Type) {
    case 'AWS::IAM::ManagedPolicy': return `arn:${partition}:iam::${account}:policy/${nameOf(name)}`
    case 'AWS::SQS::Queue': return `https://sqs.${region}.amazonaws.com/${account}/${nameOf(name)}`
    default: return nameOf(name)
  }
}

function getAtt(id, attribute) {
  const override = input.attributes?.[`${id}.${attribute}`]
  if (override) return override
  const r = resources[id] ?? fail(`GetAtt of unknown ${id}`)
  const key = `${r.Type}.${attribute}`
  switch (key) {
    case 'AWS::IAM::Role.Arn': return `arn:${partition}:iam::${account}:role/${nameOf(id)}`
    case 'AWS::IAM::InstanceProfile.Arn': return `arn:${partition}:iam::${account}:instance-profile/${nameOf(id)}`
    case 'AWS::SQS::Queue.Arn': return `arn:${partition}:sqs:${region}:${account}:${nameOf(id)}`
    case 'AWS::DynamoDB::Table.Arn': return `arn:${partition}:dynamodb:${region}:${account}:table/${nameOf(id)}`
    case 'AWS::Events::EventBus.Arn': return `arn:${partition}:events:${region}:${account}:event-bus/${nameOf(id)}`
    case 'AWS::Events::Rule.Arn': {
      const bus = r.Properties?.EventBusName ? resolve(r.Properties.EventBusName) : 'default'
      const path = bus === 'default' ? '' : `${bus.split('/').pop()}/`
      return `arn:${partition}:events:${region}:${account}:rule/${path}${nameOf(id)}`
    }
    case 'AWS::Lambda::Function.Arn': return `arn:${partition}:lambda:${region}:${account}:function:${nameOf(id)}`
    case 'AWS::SNS::Topic.TopicArn': return `arn:${partition}:sns:${region}:${account}:${nameOf(id)}`
    default: return fail(`GetAtt ${id}.${attribute} needs a value in "attributes"`)
  }
}

function condition(name) {
  const c = template.Conditions?.[name] ?? fail(`no condition ${name}`)
  return truthy(c)
}

function truthy(v) {
  if (typeof v === 'boolean') return v
  if (v && typeof v === 'object') {
    if ('Fn::Equals' in v) {
      const [a, b] = v['Fn::Equals'].map(resolve)
      return String(a) === String(b)
    }
    if ('Fn::Not' in v) return !truthy(v['Fn::Not'][0])
    if ('Fn::And' in v) return v['Fn::And'].every(truthy)
    if ('Fn::Or' in v) return v['Fn::Or'].some(truthy)
    if ('Condition' in v) return condition(v.Condition)
  }
  return fail(`not a condition: ${JSON.stringify(v)}`)
}

function sub(text, vars = {}) {
  return text.replace(/\$\{([^}]+)\}/g, (whole, name) => {
    if (name.startsWith('!')) return `\${${name.slice(1)}}`
    if (name in vars) return String(vars[name])
    if (name.includes('.')) {
      const [id, ...attr] = name.split('.')
      return String(getAtt(id, attr.join('.')))
    }
    const value = ref(name)
    return Array.isArray(value) ? value.join(',') : String(value)
  })
}

function resolve(v) {
  if (Array.isArray(v)) return v.map(resolve).filter((x) => x !== NO_VALUE)
  if (!v || typeof v !== 'object') return v
  const keys = Object.keys(v)
  if (keys.length === 1) {
    const [k] = keys
    const arg = v[k]
    switch (k) {
      case 'Ref': return ref(arg)
      case 'Fn::GetAtt': return getAtt(arg[0], arg.slice(1).join('.'))
      case 'Fn::Sub': return Array.isArray(arg)
        ? sub(arg[0], Object.fromEntries(Object.entries(arg[1]).map(([n, x]) => [n, resolve(x)])))
        : sub(arg)
      case 'Fn::If': return resolve(condition(arg[0]) ? arg[1] : arg[2])
      case 'Fn::Join': return resolve(arg[1]).flat().join(arg[0])
      case 'Fn::Select': return resolve(arg[1])[Number(resolve(arg[0]))]
      case 'Fn::Split': return String(resolve(arg[1])).split(arg[0])
      case 'Fn::Equals': case 'Fn::Not': case 'Fn::And': case 'Fn::Or': case 'Condition':
        return truthy(v)
    }
    if (k.startsWith('Fn::')) fail(`${k} is not resolved by the evaluation`)
  }
  const out = {}
  for (const [k, x] of Object.entries(v)) {
    const r = resolve(x)
    if (r !== NO_VALUE) out[k] = r
  }
  return out
}

/** The identity policies of a role: its inline policies and the template's managed ones it attaches. */
function policiesOf(roleId) {
  const role = resources[roleId] ?? fail(`no role ${roleId}`)
  if (role.Type !== 'AWS::IAM::Role') fail(`${roleId} is a ${role.Type}, not a role`)
  const props = role.Properties ?? {}
  const policies = (props.Policies ?? []).map((p) => ({
    name: `${roleId}/${resolve(p.PolicyName)}`,
    policy: resolve(p.PolicyDocument)
  }))
  const byArn = {}
  for (const [id, r] of Object.entries(resources)) {
    if (r.Type === 'AWS::IAM::ManagedPolicy') byArn[ref(id)] = id
  }
  for (const arn of resolve(props.ManagedPolicyArns ?? [])) {
    const id = byArn[arn] ?? fail(`${roleId} attaches ${arn}, which is not in the template: the evaluation cannot read it`)
    policies.push({ name: id, policy: resolve(resources[id].Properties.PolicyDocument) })
  }
  return { name: nameOf(roleId), policies }
}

const roles = {}
const results = []
for (const request of input.requests) {
  try {
    roles[request.role] ??= policiesOf(request.role)
    const role = roles[request.role]
    const simulation = {
      request: {
        principal: `arn:${partition}:sts::${account}:assumed-role/${role.name}/jitr-test`,
        action: request.action,
        resource: { resource: request.resource, accountId: account },
        contextVariables: {
          'aws:PrincipalArn': `arn:${partition}:iam::${account}:role/${role.name}`,
          'aws:PrincipalAccount': account,
          'aws:RequestedRegion': region,
          ...request.context
        }
      },
      identityPolicies: role.policies,
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: request.resourcePolicy
    }
    const validated = await runSimulation(simulation, {})
    if (validated.resultType === 'error') {
      results.push({ decision: 'Error', ignored: [], error: JSON.stringify(validated.errors) })
      continue
    }
    const ignored = validated.resultType === 'single'
      ? validated.result.ignoredContextKeys ?? []
      : [...new Set(validated.results.flatMap((r) => r.ignoredContextKeys ?? []))]
    // iam-simulate recognises templated keys only in the `prefix/name` form:
    // `kms:EncryptionContext:NAME` (documented for kms:Decrypt) is dropped by
    // its validation, so a request carrying it is decided unvalidated, on the
    // same inputs, once every other key has been accepted.
    const colonTemplated = ignored.filter((k) => /^kms:EncryptionContext:/i.test(k))
    const decision = colonTemplated.length > 0 && colonTemplated.length === ignored.length
      ? runUnsafeSimulation(simulation, {})
      : validated.overallResult
    results.push({
      decision,
      ignored: ignored.filter((k) => !colonTemplated.includes(k))
    })
  } catch (e) {
    results.push({ decision: 'Error', ignored: [], error: String(e?.message ?? e) })
  }
}
process.stdout.write(JSON.stringify(results))
